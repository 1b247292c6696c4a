"""MDLM / MD4 masked diffusion (method.md §1) on the DiT backbone."""

import jax
import jax.numpy as jnp

from ladd.diffusion import discrete_bound, masking, sampling
from ladd.diffusion.schedules import Schedule
from ladd.models.dit import DiT, DiTConfig, train_flops_per_token

TRAIN_LOSSES = ("nelbo", "masked_ce")


def counted_tokens(x0, pad_id):
  """bool [B, L]: the positions a likelihood counts (all but padding)."""
  return jnp.ones(x0.shape, jnp.bool_) if pad_id is None else x0 != pad_id


class MaskedDiffusion:
  name = "mdlm"
  has_nstep_bound = True  # nstep_nelbo() bounds -log p(x0) under the N-step sampler

  def __init__(self, config, vocab_size, pad_id=None):
    self.pad_id = pad_id  # padding (data.packing="pad" shards): never masked nor counted
    self.model_cfg = DiTConfig(vocab_size=vocab_size, seq_len=config.data.seq_len, **config.model)
    d = config.diffusion
    self.schedule = Schedule(kind=d.schedule, eps=d.eps, power=d.power)
    if d.train_loss not in TRAIN_LOSSES:
      raise ValueError(f"diffusion.train_loss must be one of {TRAIN_LOSSES}, got {d.train_loss!r}")
    self.train_loss = d.train_loss
    self.vocab_size = vocab_size
    self.mask_id = vocab_size
    self.seq_len = config.data.seq_len

  def init_model(self, rngs):
    return DiT(self.model_cfg, rngs)

  @property
  def quantities(self):
    """What each output of nelbo() is (ladd.summary reads this and nothing else): "bound"
    (bounds -log p(x0): printed with perplexity and bits), "objective" (a training
    objective: never printed as perplexity or bits) or "diagnostic"."""
    return {"nelbo": "bound"}

  @property
  def lr_scales(self):
    """Per-submodule learning-rate multipliers: none, one learning rate for everything."""
    return {}

  def latent_steps(self, settings):
    """N_y, the latent channel's own steps: None, as there is no diffused latent."""
    del settings

  @property
  def flops_per_token(self):
    return train_flops_per_token(self.model_cfg, self.seq_len)

  def describe(self):
    return {"method": self.name, "mask_schedule": self.schedule.kind,
            "time_conditioning": self.model_cfg.time_conditioning, "dtype": self.model_cfg.dtype,
            "bound": self.bound_statement}

  @property
  def bound_statement(self):
    return "continuous-time bound with end terms (masking.masked_diffusion_bound)"

  def _token_nll(self, model, x0, key):
    t_key, mask_key = jax.random.split(key)
    t = masking.stratified_times(t_key, x0.shape[0], self.schedule.eps)
    x_t = masking.mask_tokens(mask_key, x0, self.schedule.alpha(t), self.mask_id,
                              counted_tokens(x0, self.pad_id))
    logits = model(x_t, t)
    return masking.masked_token_nll(logits, x0, x_t, self.vocab_size, self.mask_id), x_t, t

  def nelbo(self, model, x0, key):
    """Per-sequence bound on -log p(x0) in nats, [B] (one stratified t per sequence plus the
    final-fill term; masking.masked_diffusion_bound). The training loss keeps alpha(t)."""
    def token_nll(x_t, t):
      return masking.masked_token_nll(model(x_t, t), x0, x_t, self.vocab_size, self.mask_id)

    diffusion, fill = masking.masked_diffusion_bound(token_nll, key, x0, self.schedule, self.mask_id)
    return {"nelbo": diffusion + fill}

  def nstep_nelbo(self, model, x0, key, steps, latent_steps=0):
    """The N-step bound of the temperature-1 ancestral sampler, per sequence [B] (nats):
    stages k = 0..N, each with a fresh x_{t_k} (discrete_bound)."""
    del latent_steps  # no diffused latent
    chain = discrete_bound.mask_chain(self.schedule, sampling.time_grid(steps, self.schedule.eps))
    return discrete_bound.sum_over_stages(lambda k, key: self._stage_bound(model, x0, key, chain, k), steps + 1, key)

  def _stage_bound(self, model, x0, key, chain, k):
    x_t = discrete_bound.chain_state(key, x0, chain, k, self.mask_id)
    logits = model(x_t, jnp.full((x0.shape[0],), chain.times[k]))
    nll = masking.masked_token_nll(logits, x0, x_t, self.vocab_size, self.mask_id)
    return {"nelbo": chain.reveal[k] * nll.sum(-1)}

  def loss(self, model, x0, key, step):
    del step  # the MDLM objective does not change during training
    token_nll, x_t, t = self._token_nll(model, x0, key)
    nelbo = masking.nelbo_per_sequence(token_nll, t, self.schedule)
    num_tokens = counted_tokens(x0, self.pad_id).sum()
    nelbo_per_token = nelbo.sum() / num_tokens
    if self.train_loss == "nelbo":
      loss = nelbo_per_token
    else:
      loss = token_nll.sum() / num_tokens
    metrics = {"nelbo_per_token": nelbo_per_token,
               "mask_fraction": jnp.mean(x_t == self.mask_id)}
    return loss, metrics

  def sample(self, model, key, num_samples, settings, clamped=None):
    """Returns (tokens [N, L], {"nfe": calls}); the whole loop is one jit-able function.
    `clamped` (int, broadcastable to [N, L], sampling.FREE where generated) fixes tokens."""
    def denoise(x_t, t):
      logits = model(x_t, jnp.full((x_t.shape[0],), t))
      return masking.subs_log_probs(logits, x_t, self.vocab_size, self.mask_id)

    tokens, nfe = sampling.ancestral_sample(
        denoise, key, (num_samples, self.seq_len), self.schedule, settings,
        self.mask_id, self.model_cfg.time_conditioning, clamped)
    return tokens, {"nfe": nfe}

  def sampler_used(self, settings):
    """What `sample` runs with `settings`, as recorded beside every sample."""
    if settings.latent_init != "prior":
      raise ValueError(f"{self.name} draws no latent before the tokens: latent_init"
                       f" {settings.latent_init!r} applies to sequential LADD and VMD only")
    return dict(sampling.settings_record(settings, not self.model_cfg.time_conditioning),
                sampler="ancestral", N_y=self.latent_steps(settings))
