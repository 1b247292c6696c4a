"""LADD, latent-augmented masked diffusion (method.md §2): Co-LADD ("co_ladd", Gaussian
latent) and Di-LADD ("di_ladd", vector-quantised codes), each with the joint or the
sequential schedule (`latent.schedule`).

Joint: one MM-DiT call per step denoises tokens and latent together. Sequential: the
latent is generated first (Co: by the small g_psi in N_y DDIM steps; Di: by the joint
network with all tokens masked), then the tokens in N_x steps given the clean latent
(t_y = 0); training feeds the token denoiser the clean latent accordingly.

Losses are sums over a sequence, normalised per token like MDLM's. `nelbo()` reports
elbo_x (the token NELBO given the latent) and elbo_y (the latent's own bound) separately
from the training loss; `describe()["bound"]` says whether their sum bounds -log p(x0).
"""

import jax
import jax.numpy as jnp

from ladd.diffusion import gaussian, masking, sampling, vq
from ladd.diffusion.schedules import Schedule
from ladd.models.dit import DiTConfig, train_flops_per_token
from ladd.models.latent import LaddModel, LatentSpec

SCHEDULES = ("joint", "sequential")
STAGES = ("both", "tokens", "latent")
SIGMA0_MODES = ("none", "fixed", "learned")
Y_WEIGHTINGS = ("unweighted", "elbo")
CODE_SCHEDULES = ("linear", "polynomial")
TRAIN_LOSSES = ("nelbo", "masked_ce")


def _check(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def slot_normalised(y0):
  """Norm sqrt(d) per slot: the scale of a N(0, I) draw."""
  return y0 * jax.lax.rsqrt(jnp.sum(jnp.square(y0), -1, keepdims=True) + 1e-12) * jnp.sqrt(y0.shape[-1])


def per_sequence_sq(a, b):
  return jnp.sum(jnp.square(a - b).reshape(a.shape[0], -1), -1)


class LatentDiffusion:
  """What both LADD variants share: config, encoder input, times, token term, samplers'
  token phase. Subclasses set `kind` and implement `_terms` and the samplers."""

  kind = ""
  nelbo_is_bound = True

  def __init__(self, config, vocab_size):
    lat, d = config.latent, config.diffusion
    for name, value, allowed in (
        ("latent.schedule", lat.schedule, SCHEDULES), ("latent.stage", lat.stage, STAGES),
        ("latent.sigma0_mode", lat.sigma0_mode, SIGMA0_MODES),
        ("latent.y_weighting", lat.y_weighting, Y_WEIGHTINGS),
        ("latent.code_schedule", lat.code_schedule, CODE_SCHEDULES),
        ("diffusion.train_loss", d.train_loss, TRAIN_LOSSES)):
      _check(name, value, allowed)
    if not 0.0 <= lat.dropout < 1.0 or not 0.0 <= lat.corruption_max <= 1.0:
      raise ValueError("latent.dropout must be in [0, 1) and latent.corruption_max in [0, 1]")
    if lat.encoder_lr_scale < 0:
      raise ValueError(f"latent.encoder_lr_scale must be >= 0, got {lat.encoder_lr_scale}")
    if lat.time_shift <= 0:
      raise ValueError(f"latent.time_shift must be > 0, got {lat.time_shift}")
    if lat.freeze_encoder and config.optim.weight_decay > 0:
      raise ValueError("latent.freeze_encoder stops the encoder's gradients; with optim.weight_decay > 0 "
                       "AdamW would still shrink it: set optim.weight_decay = 0")
    self.model_cfg = DiTConfig(vocab_size=vocab_size, seq_len=config.data.seq_len, **config.model)
    self.spec = LatentSpec(
        kind=self.kind, sequential=lat.schedule == "sequential", slots=lat.slots, dim=lat.dim,
        encoder_layers=lat.encoder_layers, encoder_d_model=lat.encoder_d_model,
        encoder_heads=lat.encoder_heads, standardize=lat.standardize, sigma0_mode=lat.sigma0_mode, sigma0=lat.sigma0,
        denoiser_layers=lat.denoiser_layers, denoiser_d_model=lat.denoiser_d_model,
        denoiser_heads=lat.denoiser_heads, codebook_size=lat.codebook_size,
        condition_ty=lat.condition_ty)
    self.lat = lat
    self.schedule = Schedule(kind=d.schedule, eps=d.eps, power=d.power)
    self.train_loss = d.train_loss
    self.vocab_size = vocab_size
    self.mask_id = vocab_size
    self.seq_len = config.data.seq_len
    self.sequential = lat.schedule == "sequential"

  @property
  def lr_scales(self):
    return {"encoder": self.lat.encoder_lr_scale}

  def init_model(self, rngs):
    return LaddModel(self.model_cfg, self.spec, rngs, self.lat.codebook_decay)

  @property
  def flops_per_token(self):
    """Joint backbone over L + S' positions plus the encoder (latent extras are small)."""
    s = self.spec
    backbone = train_flops_per_token(self.model_cfg, self.seq_len + s.slots)
    enc_cfg = DiTConfig(self.vocab_size, self.seq_len, d_model=s.encoder_d_model,
                        n_layers=s.encoder_layers, n_heads=s.encoder_heads,
                        vocab_pad_multiple=self.model_cfg.vocab_pad_multiple)
    return backbone + train_flops_per_token(enc_cfg, self.seq_len + s.slots)

  def describe(self):
    return {"method": self.name, "latent_schedule": self.lat.schedule, "mask_schedule": self.schedule.kind,
            "latent_slots": self.spec.slots, "latent_dim": self.spec.dim,
            "time_conditioning": self.model_cfg.time_conditioning, "dtype": self.model_cfg.dtype,
            "bound": self.bound_kind}

  def latent_steps(self, settings):
    """N_y: the sequential schedule's own latent steps; the joint one shares the N_x grid."""
    return settings.num_latent_steps if self.sequential else settings.steps

  # --- pieces shared by both variants -------------------------------------------------

  def _times(self, key, batch):
    """(t_x, t_y, dt_y/du): t_y is t_x, or an independent stratified draw, then shifted."""
    kx, ky, kp = jax.random.split(key, 3)
    t_x = masking.stratified_times(kx, batch, self.schedule.eps)
    u = t_x
    if self.lat.independent_times:
      u = jax.random.permutation(kp, masking.stratified_times(ky, batch, self.schedule.eps))
    a = self.lat.time_shift
    return t_x, gaussian.time_shift(u, a), a / jnp.square(1.0 + (a - 1.0) * u)

  def _corruption(self, key, x_t):
    """p_r ~ U[0, corruption_max] per sequence; drop masked positions with prob p_r."""
    if self.lat.corruption_max == 0:
      return None
    kp, kd = jax.random.split(key)
    p_r = jax.random.uniform(kp, (x_t.shape[0], 1), maxval=self.lat.corruption_max)
    return (x_t == self.mask_id) & (jax.random.uniform(kd, x_t.shape) < p_r)

  def _encode(self, model, x0, x_t, key, training):
    """The encoder output z [B, S', d]; input corruption and batch statistics only while
    training (the reported bound needs y0 to be a function of x0 alone). A frozen encoder
    (stage 2) keeps its statistics too."""
    if not training:
      return model.encoder(x0)
    corrupt = self._corruption(key, x_t)
    if self.lat.freeze_encoder:
      return jax.lax.stop_gradient(model.encoder(x0, corrupt))
    return model.encoder(x0, corrupt, update_statistics=True)

  def _keep_latent(self, key, batch, training):
    """bool [B]: False for the p_tau examples trained without a latent."""
    if not training or self.lat.dropout == 0:
      return jnp.ones((batch,), bool)
    return jax.random.uniform(key, (batch,)) >= self.lat.dropout

  def _token_terms(self, logits, x0, x_t, t_x):
    """(per-sequence token NELBO, per-sequence training loss of the token channel)."""
    nll = masking.masked_token_nll(logits, x0, x_t, self.vocab_size, self.mask_id)
    nelbo = masking.nelbo_per_sequence(nll, t_x, self.schedule)
    return nelbo, (nelbo if self.train_loss == "nelbo" else nll.sum(-1))

  def _masked_tokens(self, key, x0, t_x):
    return masking.mask_tokens(key, x0, self.schedule.alpha(t_x), self.mask_id)

  def _combine(self, loss_x, loss_y, extra, num_tokens):
    """w_x L_x + w_y L_y + extra, with the stage selecting the channels."""
    stage = self.lat.stage
    total = extra
    if stage in ("both", "tokens"):
      total = total + self.lat.w_x * loss_x.sum()
    if stage in ("both", "latent"):
      total = total + self.lat.w_y * loss_y.sum()
    return total / num_tokens

  def _token_phase(self, model, key, num_samples, settings, latent, t_y, latent_masked=None, clamped=None):
    """N_x ancestral token steps (with caching) given a fixed latent: returns (x, nfe)."""
    def denoise(x_t, t):
      batch = x_t.shape[0]
      logits, _ = model.denoiser(x_t, latent, jnp.full((batch,), t), jnp.full((batch,), t_y), latent_masked)
      return masking.subs_log_probs(logits, x_t, self.vocab_size, self.mask_id)

    time_conditioned = self.model_cfg.time_conditioning
    return sampling.ancestral_sample(denoise, key, (num_samples, self.seq_len), self.schedule,
                                     settings, self.mask_id, time_conditioned, clamped)

  def sample(self, model, key, num_samples, settings, clamped=None):
    """Tokens [N, L] and {"nfe", "nfe_x", "nfe_y"}. Clamped tokens are seen at every step
    of the joint schedule; the sequential one draws its latent before any token, from the
    prior (settings.latent_init "prior") or from the encoder given the clamped tokens
    ("encoder")."""
    self.sampler_used(settings)  # rejects a latent_init this schedule cannot use
    if not self.sequential:
      return self._sample_joint(model, key, num_samples, settings, clamped)
    if settings.latent_init == "encoder":
      if clamped is None:
        raise ValueError("latent_init 'encoder' encodes the clamped tokens: give some")
      latent, masked = self._encoded_clamps(model, clamped, num_samples)
      x, nfe_x = self._token_phase(model, key, num_samples, settings, latent, 0.0, masked, clamped)
      return x, {"nfe": nfe_x + 1, "nfe_x": nfe_x, "nfe_y": jnp.int32(1)}
    return self._sample_sequential(model, key, num_samples, settings, clamped)

  def _encoder_input(self, clamped, num_samples):
    """(x0, dropped) for the encoder: the free positions dropped, as training corruption
    drops masked ones (so the latent is in distribution when latent.corruption_max > 0)."""
    clamped = jnp.broadcast_to(jnp.asarray(clamped, jnp.int32), (num_samples, self.seq_len))
    free = clamped == sampling.FREE
    return jnp.where(free, 0, clamped), free

  def sampler_used(self, settings):
    if settings.latent_init == "resample":
      raise ValueError("latent_init 'resample' is VMD's; sequential LADD takes 'prior' or 'encoder'")
    if not self.sequential and settings.latent_init != "prior":
      raise ValueError("the joint schedule denoises its latent with the tokens, seeing the clamped"
                       f" ones at every step: latent_init {settings.latent_init!r} applies to"
                       " sequential schedules only")
    used = dict(sampling.settings_record(settings, self.sequential and not self.model_cfg.time_conditioning),
                sampler=f"{self.lat.schedule} ancestral", N_y=self.latent_steps(settings))
    if self.sequential:
      used["latent_init"] = settings.latent_init
    return used

  def nelbo(self, model, x0, key):
    terms = self._terms(model, x0, key, training=False)
    return {"nelbo": terms["elbo_x"] + terms["elbo_y"], "elbo_x": terms["elbo_x"], "elbo_y": terms["elbo_y"],
            "latent_information": self._latent_information(model, x0, terms["latent_input"])}

  def _latent_information(self, model, x0, clean):
    """How much the clean latent tells the token network with every token masked: the NLL
    of x0 at t_x = 1 with an empty latent (zero / all codes masked, as in latent dropout)
    minus that with the clean latent, nats per sequence. About 0 when the latent has
    collapsed; on binsaw a latent that carries the phase gives ~20 (88.7 - 68)."""
    all_masked = jnp.full_like(x0, self.mask_id)
    ones, zeros = jnp.ones((x0.shape[0],)), jnp.zeros((x0.shape[0],))

    def nll(latent, latent_masked):
      logits, _ = model.denoiser(all_masked, latent, ones, zeros, latent_masked)
      log_probs = masking.subs_log_probs(logits, all_masked, self.vocab_size, self.mask_id)
      return -jnp.take_along_axis(log_probs, x0[..., None], -1).sum((1, 2))

    return nll(*self._empty_latent_input(model, x0.shape[0])) - nll(*clean)

  def loss(self, model, x0, key, step):
    del step  # the objective does not change during training; stages are separate runs
    terms = self._terms(model, x0, key, training=True)
    loss = self._combine(terms["loss_x"], terms["loss_y"], terms["extra"], x0.size)
    metrics = {"nelbo_per_token": (terms["elbo_x"] + terms["elbo_y"]).sum() / x0.size,
               "elbo_x_per_token": terms["elbo_x"].sum() / x0.size,
               "elbo_y_per_sequence": terms["elbo_y"].mean(), **terms["metrics"]}
    return loss, metrics


class CoLadd(LatentDiffusion):
  """Continuous latent: VP Gaussian diffusion on y0 = E(x0) [B, S', d]."""

  name = "co_ladd"
  kind = "co"

  def __init__(self, config, vocab_size):
    super().__init__(config, vocab_size)
    self.latent_schedule = gaussian.GaussianSchedule(config.latent.gaussian_schedule, config.diffusion.eps)

  @property
  def nelbo_is_bound(self):
    return self.lat.sigma0_mode != "none"

  @property
  def bound_kind(self):
    if not self.nelbo_is_bound:
      return "elbo-style only (deterministic continuous encoder: elbo_y is a density term)"
    return "variational bound (stochastic encoder; elbo_y includes -H(q(y0|x0)))"

  def _clean_latent(self, model, x0, x_t, key, training):
    enc_key, noise_key = jax.random.split(key)
    y0 = self._encode(model, x0, x_t, enc_key, training)
    if self.lat.l2_norm:
      y0 = slot_normalised(y0)
    sigma0 = self._sigma0(model)
    if sigma0 is not None:
      y0 = y0 + sigma0 * jax.random.normal(noise_key, y0.shape)
    return y0

  def _sigma0(self, model):
    if self.lat.sigma0_mode == "fixed":
      return jnp.float32(self.lat.sigma0)
    if self.lat.sigma0_mode == "learned":
      return jnp.exp(model.encoder.log_sigma0[...])
    return None

  def _latent_bound(self, model, y0, sq_err, t_y, dt_y):
    """Per-sequence elbo_y: ELBO-weighted diffusion term + prior KL (- encoder entropy)."""
    bound = self.latent_schedule.elbo_weight(t_y) * dt_y * sq_err + self.latent_schedule.prior_kl(y0)
    sigma0 = self._sigma0(model)
    if sigma0 is not None:
      bound = bound - y0[0].size * 0.5 * jnp.log(2 * jnp.pi * jnp.e * sigma0**2)
    return bound

  def _terms(self, model, x0, key, training):
    keys = jax.random.split(key, 6)
    batch = x0.shape[0]
    t_x, t_y, dt_y = self._times(keys[0], batch)
    x_t = self._masked_tokens(keys[1], x0, t_x)
    y0 = self._clean_latent(model, x0, x_t, keys[2], training)
    keep = self._keep_latent(keys[3], batch, training)
    y0_in = jnp.where(keep[:, None, None], y0, 0.0)
    y_t = jnp.where(keep[:, None, None], gaussian.noisy(self.latent_schedule, y0, jax.random.normal(keys[4], y0.shape), t_y), 0.0)
    if self.sequential:  # the token denoiser sees the clean latent; g_psi learns the latent
      logits, _ = model.denoiser(x_t, y0_in, t_x, jnp.zeros_like(t_y))
      y0_hat = model.latent_denoiser(y_t, t_y)
    else:
      logits, y0_hat = model.denoiser(x_t, y_t, t_x, t_y)
    elbo_x, loss_x = self._token_terms(logits, x0, x_t, t_x)
    sq_err = per_sequence_sq(y0_hat, y0)
    weight = self.latent_schedule.elbo_weight(t_y) * dt_y if self.lat.y_weighting == "elbo" else 1.0
    # (choice) L_y trains the latent denoiser only: through its target it would also pull
    # the encoder toward a constant y0, which is trivially predictable (seen on binsaw:
    # the latent collapsed and carried nothing). The encoder learns from L_x (and the KL).
    target_err = per_sequence_sq(y0_hat, jax.lax.stop_gradient(y0))
    loss_y = jnp.where(keep, weight * target_err, 0.0)
    kl = 0.5 * self.lat.kl_weight * jnp.sum(jnp.square(y0))
    return {"elbo_x": elbo_x, "elbo_y": self._latent_bound(model, y0, sq_err, t_y, dt_y),
            "loss_x": loss_x, "loss_y": loss_y, "extra": kl, "latent_input": (y0, None),
            "metrics": {"latent_mse": sq_err.mean() / y0[0].size, "latent_norm": jnp.sqrt(jnp.mean(jnp.square(y0)))}}

  def _empty_latent_input(self, model, batch):
    del model
    return jnp.zeros((batch, self.spec.slots, self.spec.dim)), None

  def _latent_step(self, key, y, y0_hat, t, s, settings):
    if settings.latent_sampler == "ancestral":
      return gaussian.ancestral_step(self.latent_schedule, key, y, y0_hat, t, s)
    return gaussian.ddim_step(self.latent_schedule, y, y0_hat, t, s)

  def sampler_used(self, settings):
    used = dict(super().sampler_used(settings), latent_sampler=settings.latent_sampler)
    if self.sequential and settings.latent_init == "encoder":
      used.update(N_y=0, latent_sampler="none: encoder")
    return used

  def _encoded_clamps(self, model, clamped, num_samples):
    y0 = model.encoder(*self._encoder_input(clamped, num_samples))
    return (slot_normalised(y0) if self.lat.l2_norm else y0), None

  def _sample_joint(self, model, key, num_samples, settings, clamped):
    """N steps of (token ancestral step, latent DDIM step) from one call each; a final call
    fills the remaining masks. NFE = N + 1."""
    latent_time = lambda t: gaussian.time_shift(t, self.lat.time_shift)
    init_key, key = jax.random.split(key)
    y = jax.random.normal(init_key, (num_samples, self.spec.slots, self.spec.dim), jnp.float32)

    def denoise(x, t, y):
      full = lambda v: jnp.full((num_samples,), v)
      logits, y0_hat = model.denoiser(x, y, full(t), full(latent_time(t)))
      return masking.subs_log_probs(logits, x, self.vocab_size, self.mask_id), y0_hat

    def advance(key, y, y0_hat, t, s):
      return self._latent_step(key, y, y0_hat, latent_time(t), latent_time(s), settings)

    x, nfe = sampling.ancestral_sample(
        denoise, key, (num_samples, self.seq_len), self.schedule, settings, self.mask_id,
        self.model_cfg.time_conditioning, clamped, sampling.LatentChannel(y, advance))
    return x, {"nfe": nfe, "nfe_x": nfe, "nfe_y": jnp.int32(0)}

  def _sample_sequential(self, model, key, num_samples, settings, clamped):
    """N_y g_psi steps (the last one returns y0-hat itself), then N_x token steps with the
    clean latent at t_y = 0. NFE = N_y small g_psi calls + the token sampler's calls."""
    steps_y = settings.num_latent_steps
    grid = sampling.time_grid(steps_y, self.schedule.eps)
    init_key, latent_key, token_key = jax.random.split(key, 3)
    y = jax.random.normal(init_key, (num_samples, self.spec.slots, self.spec.dim), jnp.float32)

    def body(i, carry):
      y, key = carry
      key, step_key = jax.random.split(key)
      t, s = grid[i], grid[i + 1]
      y0_hat = model.latent_denoiser(y, jnp.full((num_samples,), t))
      y_next = self._latent_step(step_key, y, y0_hat, t, s, settings)
      return jnp.where(i == steps_y - 1, y0_hat, y_next), key

    y, _ = jax.lax.fori_loop(0, steps_y, body, (y, latent_key))
    x, nfe_x = self._token_phase(model, token_key, num_samples, settings, y, 0.0, clamped=clamped)
    return x, {"nfe": nfe_x + steps_y, "nfe_x": nfe_x, "nfe_y": jnp.int32(steps_y)}


class DiLadd(LatentDiffusion):
  """Discrete latent: S' VQ codes (ids 0..K-1, MASK = K) under their own masking process."""

  name = "di_ladd"
  kind = "di"
  bound_kind = "variational bound (deterministic quantiser: -log p(x0) <= elbo_x + elbo_y)"

  def __init__(self, config, vocab_size):
    super().__init__(config, vocab_size)
    power = 2.0 if config.latent.code_schedule == "polynomial" else config.diffusion.power
    self.code_schedule = Schedule(kind=config.latent.code_schedule, eps=config.diffusion.eps, power=power)
    self.code_mask = config.latent.codebook_size

  def _code_vectors(self, model, codes):
    """Codebook vectors of unmasked codes (masked slots are replaced inside the denoiser)."""
    return model.quantizer.codebook[jnp.minimum(codes, self.code_mask - 1)], codes == self.code_mask

  def _empty_latent_input(self, model, batch):
    return self._code_vectors(model, jnp.full((batch, self.spec.slots), self.code_mask, jnp.int32))

  def _code_terms(self, logits_y, ids, codes_t, t_y):
    nll = masking.masked_token_nll(logits_y, ids, codes_t, self.code_mask, self.code_mask)
    return masking.nelbo_per_sequence(nll, t_y, self.code_schedule), nll.sum(-1)

  def _terms(self, model, x0, key, training):
    keys = jax.random.split(key, 6)
    batch = x0.shape[0]
    t_x, t_y, _ = self._times(keys[0], batch)  # masked processes need no density correction
    x_t = self._masked_tokens(keys[1], x0, t_x)
    z_e = self._encode(model, x0, x_t, keys[2], training)
    ids, z_q = model.quantizer(z_e, update=training)
    z = vq.straight_through(z_e, z_q)
    keep = self._keep_latent(keys[3], batch, training)
    codes_t = masking.mask_tokens(keys[4], ids, self.code_schedule.alpha(t_y), self.code_mask)
    codes_t = jnp.where(keep[:, None], codes_t, self.code_mask)  # dropped: every code masked
    if self.sequential:
      # tokens given clean codes (t_y = 0); codes given all-masked tokens (t_x = 1)
      clean = jnp.where(keep[:, None], ids, self.code_mask)
      logits, _ = model.denoiser(x_t, z, t_x, jnp.zeros_like(t_y), clean == self.code_mask)
      all_masked = jnp.full_like(x0, self.mask_id)
      _, logits_y = model.denoiser(all_masked, z, jnp.ones_like(t_x), t_y, codes_t == self.code_mask)
    else:
      logits, logits_y = model.denoiser(x_t, z, t_x, t_y, codes_t == self.code_mask)
    elbo_x, loss_x = self._token_terms(logits, x0, x_t, t_x)
    elbo_y, nll_y = self._code_terms(logits_y, ids, codes_t, t_y)
    loss_y = jnp.where(keep, elbo_y if self.train_loss == "nelbo" else nll_y, 0.0)
    commit = vq.commitment_loss(z_e, z_q, self.lat.commitment) * x0.shape[0]
    return {"elbo_x": elbo_x, "elbo_y": elbo_y, "loss_x": loss_x, "loss_y": loss_y, "extra": commit,
            "latent_input": self._code_vectors(model, ids),
            "metrics": dict(vq.usage_metrics(ids, self.code_mask), commitment=commit / batch)}

  def _code_log_probs(self, logits_y, codes, temperature):
    return sampling.tempered(masking.subs_log_probs(logits_y, codes, self.code_mask, self.code_mask), temperature)

  def sampler_used(self, settings):
    used = super().sampler_used(settings)
    if self.sequential and settings.latent_init == "encoder":
      used["N_y"] = 0
    return used

  def _encoded_clamps(self, model, clamped, num_samples):
    ids, _ = model.quantizer(model.encoder(*self._encoder_input(clamped, num_samples)), update=False)
    return self._code_vectors(model, ids)

  def _sample_joint(self, model, key, num_samples, settings, clamped):
    """Both channels take the masked ancestral step on the same grid (codes on their own
    schedule, as the loop's latent channel); a final call fills the tokens. NFE = N + 1."""
    codes = jnp.full((num_samples, self.spec.slots), self.code_mask, jnp.int32)
    code_time = lambda t: gaussian.time_shift(t, self.lat.time_shift)

    def denoise(x, t, codes):
      full = jnp.full((num_samples,), t)
      vectors, masked = self._code_vectors(model, codes)
      logits, logits_y = model.denoiser(x, vectors, full, code_time(full), masked)
      return (masking.subs_log_probs(logits, x, self.vocab_size, self.mask_id),
              self._code_log_probs(logits_y, codes, settings.temperature))

    def advance(key, codes, code_log_probs, t, s):
      return sampling.unmask_step(key, codes, code_log_probs, self.code_schedule.alpha(code_time(t)),
                                  self.code_schedule.alpha(code_time(s)), self.code_mask, settings.noise_bits)

    x, nfe = sampling.ancestral_sample(
        denoise, key, (num_samples, self.seq_len), self.schedule, settings, self.mask_id,
        self.model_cfg.time_conditioning, clamped, sampling.LatentChannel(codes, advance))
    return x, {"nfe": nfe, "nfe_x": nfe, "nfe_y": jnp.int32(0)}

  def _sample_sequential(self, model, key, num_samples, settings, clamped):
    """N_y code steps with every token masked (t_x = 1), then N_x token steps with the codes
    fixed (t_y = 0); both phases are the §1 ancestral sampler (with its caching)."""
    latent_key, token_key = jax.random.split(key)
    all_masked = jnp.full((num_samples, self.seq_len), self.mask_id, jnp.int32)
    ones = jnp.ones((num_samples,))

    def denoise_codes(codes, t):
      vectors, masked = self._code_vectors(model, codes)
      _, logits_y = model.denoiser(all_masked, vectors, ones, jnp.full((num_samples,), t), masked)
      return masking.subs_log_probs(logits_y, codes, self.code_mask, self.code_mask)

    code_settings = sampling.SamplerSettings(
        steps=settings.num_latent_steps, temperature=settings.temperature,
        final_fill=settings.final_fill, cache=settings.cache, noise_bits=settings.noise_bits)
    codes, nfe_y = sampling.ancestral_sample(
        denoise_codes, latent_key, (num_samples, self.spec.slots), self.code_schedule, code_settings,
        self.code_mask, self.spec.condition_ty)
    vectors, masked = self._code_vectors(model, codes)
    x, nfe_x = self._token_phase(model, token_key, num_samples, settings, vectors, 0.0, masked, clamped)
    return x, {"nfe": nfe_x + nfe_y, "nfe_x": nfe_x, "nfe_y": nfe_y}
