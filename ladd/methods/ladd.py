"""LADD, latent-augmented masked diffusion (method.md §2): Co-LADD ("co_ladd", Gaussian
latent) and Di-LADD ("di_ladd", vector-quantised codes), each with the joint or the
sequential schedule (`latent.schedule`).

Joint: one MM-DiT call per step denoises tokens and latent together. Sequential: the
latent is generated first (Co: by the small g_psi in N_y DDIM steps; Di: by the joint
network with all tokens masked), then the tokens in N_x steps given the clean latent
(t_y = 0); training feeds the token denoiser the clean latent accordingly.

Losses are sums over a sequence, normalised per token like MDLM's. `nelbo()` reports
elbo_x (the token NELBO given the latent) and elbo_y (the latent's own bound) separately
from the training loss; `quantities` says whether their sum bounds -log p(x0).

The reported bound follows the sampler's one noise path u: 1 -> eps, t_x = u, t_y =
time_shift(u) (joint: both channels at once; sequential: the latent phase, then the token
phase, two separate integrals estimated at the same u; joint with latent.lead > 0: t_y =
gaussian.latent_path(u), a latent that leads), with dt_y/du in the latent weight,
beta(t) masking and the end terms of ladd.diffusion.masking: the token final fill at t_x =
eps; Di sequential also the code fill (its code phase fills the codes), Di joint none (the
sampler never fills codes: those still masked at the end are not scored, as they need not
be generated); Co the Gaussian decoder at t_y(eps), the prior KL at 1 and, with a
stochastic encoder, -H(q(y0 | x0)). Training keeps alpha(t) masking without end terms.
"""

import jax
import jax.numpy as jnp

from ladd.diffusion import discrete_bound, gaussian, masking, sampling, vq
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
    if not 0.0 <= lat.lead < 1.0:
      raise ValueError(f"latent.lead must be in [0, 1), got {lat.lead}")
    if lat.lead > 0 and lat.schedule == "sequential":
      raise ValueError("latent.lead moves the joint schedule's latent ahead of its tokens; the sequential"
                       " schedule already draws the latent first: set latent.lead = 0")
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
            "bound": self.bound_statement}

  @property
  def quantities(self):
    """What each output of nelbo() is (see MaskedDiffusion.quantities)."""
    return {"nelbo": "bound" if self.is_bound else "objective", "elbo_x": "diagnostic",
            "elbo_y": "diagnostic", "latent_information": "diagnostic"}

  def latent_steps(self, settings):
    """N_y: the sequential schedule's own latent steps; the joint one shares the N_x grid."""
    return settings.num_latent_steps if self.sequential else settings.steps

  # --- pieces shared by both variants -------------------------------------------------

  def _times(self, key, batch, training):
    """(t_x, t_y, dt_y/du) with t_y = t_y(u) on the latent's path. u = t_x: the sampler's one noise path;
    training may draw u independently (latent.independent_times, so the token model also
    sees clean latents), which the bound may not: averaged over independent times the
    integrand is the ELBO of no sampler (5/6 log V < log V on x1 = x2 ~ U{V}, y = x1)."""
    kx, ky, kp = jax.random.split(key, 3)
    t_x = masking.stratified_times(kx, batch, self.schedule.eps)
    u = t_x
    if training and self.lat.independent_times:
      u = jax.random.permutation(kp, masking.stratified_times(ky, batch, self.schedule.eps))
    return (t_x, *self._latent_path(u))

  def _latent_path(self, u):
    """(t_y(u), dt_y/du): the sampler's latent time at token time u (gaussian.latent_path)."""
    return gaussian.latent_path(u, self.lat.time_shift, self.lat.lead, self.schedule.eps)

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

  def _token_terms(self, logits, x0, x_t, t_x, training):
    """(per-sequence token NELBO, per-sequence training loss of the token channel); the
    evaluation NELBO is the bound's integral term (the fill term comes from _token_fill)."""
    nll = masking.masked_token_nll(logits, x0, x_t, self.vocab_size, self.mask_id)
    nelbo = masking.nelbo_per_sequence(nll, t_x, self.schedule)
    loss = nelbo if self.train_loss == "nelbo" else nll.sum(-1)
    return (nelbo if training else masking.diffusion_term(nll, t_x, self.schedule)), loss

  def _masked_tokens(self, key, x0, t_x, training):
    keep = self.schedule.alpha(t_x) if training else masking.keep_probability(self.schedule, t_x)
    return masking.mask_tokens(key, x0, keep, self.mask_id)

  def _end_times(self, batch):
    """(t_x, t_y) at the end of the sampler's path, u = eps: where the final fill happens."""
    t_x = jnp.full((batch,), self.schedule.eps, jnp.float32)
    return t_x, self._latent_path(t_x)[0]

  def _token_fill(self, key, x0, latent_logits):
    """The token final-fill term [B]: latent_logits(x_fill, t_x_end) -> token logits."""
    t_end, _ = self._end_times(x0.shape[0])
    x_fill = self._masked_tokens(key, x0, t_end, training=False)
    logits = latent_logits(x_fill, t_end)
    return masking.fill_term(masking.masked_token_nll(logits, x0, x_fill, self.vocab_size, self.mask_id))

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
    """Per-sequence nelbo = elbo_x + elbo_y [B], a bound where `quantities` says so."""
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
    if config.latent.sigma0_mode == "learned" and config.latent.y_weighting != "elbo":
      raise ValueError("latent.sigma0_mode='learned' needs latent.y_weighting='elbo': sigma0 learns from its"
                       " part of the ELBO (the weighted L_y and the encoder entropy); any other weighting"
                       " of L_y against the entropy moves it to an arbitrary value")

  @property
  def is_bound(self):
    """A deterministic continuous latent has entropy -inf under q: no bound (method.md §7)."""
    return self.lat.sigma0_mode != "none"

  @property
  def bound_statement(self):
    if not self.is_bound:
      return "none: deterministic continuous encoder, elbo_y is a density term (an objective)"
    return "variational bound (stochastic encoder; elbo_y includes the decoder term and -H(q(y0|x0)))"

  def _clean_latent(self, model, x0, x_t, key, training):
    """(y0, the L_y target): y0 = E(x0) + sigma0 xi; the target passes gradients to sigma0
    only, never to the encoder's mean (see the choice in _terms)."""
    enc_key, noise_key = jax.random.split(key)
    y0 = self._encode(model, x0, x_t, enc_key, training)
    if self.lat.l2_norm:
      y0 = slot_normalised(y0)
    target = jax.lax.stop_gradient(y0)
    sigma0 = self._sigma0(model)
    if sigma0 is not None:
      noise = sigma0 * jax.random.normal(noise_key, y0.shape)
      y0, target = y0 + noise, target + noise
    return y0, target

  @property
  def has_nstep_bound(self):
    return self.lat.sigma0_mode != "none"  # a deterministic continuous latent has no density

  def nstep_nelbo(self, model, x0, key, steps, latent_steps=0):
    """The N-step bound, per sequence [B] (nats), of the temperature-1 sampler with ancestral
    Gaussian latent steps (latent_sampler = "ancestral": DDIM is deterministic, no density)
    and a Gaussian last latent step y0 ~ N(y0-hat, I / SNR(t_N)) in place of y0 = y0-hat:
    -log p(x0) <= E_{q(y0 | x0)}[-log p(x0, y0)] - H(q(y0 | x0)), with -log p(x0, y0) <=
    elbo_x + elbo_y: token KLs (discrete_bound), the latent's prior KL at t = 1, its per-step
    Gaussian KLs and the decoder term at t_N, minus the encoder entropy (method.md §7).

    Joint: one chain on the token grid, the latent at its path's times (_latent_path); the final call fills
    the tokens and decodes y0 (which the token output does not depend on). Sequential: g_psi's
    chain on its own N_y = latent_steps (0: N) grid with N_y steps and the decoder call at
    t = eps (N_y + 1 calls; the sampler returns y0-hat at its N_y-th), then N token stages
    given y0 at t_y = 0."""
    enc_key, y_key, x_key = jax.random.split(key, 3)
    y0, _ = self._clean_latent(model, x0, None, enc_key, training=False)
    dims = y0[0].size
    batch = x0.shape[0]
    full = lambda v: jnp.full((batch,), v)
    grid = sampling.time_grid(steps, self.schedule.eps)
    token_chain = discrete_bound.mask_chain(self.schedule, grid)

    def token_kl(logits, x_t, k):
      nll = masking.masked_token_nll(logits, x0, x_t, self.vocab_size, self.mask_id)
      return token_chain.reveal[k] * nll.sum(-1)

    def latent_y_t(key, times, k):
      return gaussian.noisy(self.latent_schedule, y0, jax.random.normal(key, y0.shape), times[k])

    if self.sequential:
      latent_grid = sampling.time_grid(latent_steps or steps, self.schedule.eps)

      def latent_stage(k, key):
        y0_hat = model.latent_denoiser(latent_y_t(key, latent_grid, k), full(latent_grid[k]))
        return {"elbo_y": self._latent_stage_term(latent_grid, k, per_sequence_sq(y0_hat, y0), dims)}

      def token_stage(k, key):
        x_t = discrete_bound.chain_state(key, x0, token_chain, k, self.mask_id)
        logits, _ = model.denoiser(x_t, y0, full(grid[k]), full(0.0))
        return {"elbo_x": token_kl(logits, x_t, k)}

      terms = dict(discrete_bound.sum_over_stages(latent_stage, latent_grid.shape[0], y_key),
                   **discrete_bound.sum_over_stages(token_stage, steps + 1, x_key))
    else:
      latent_times = self._latent_path(grid)[0]

      def joint_stage(k, key):
        mask_key, noise_key = jax.random.split(key)
        x_t = discrete_bound.chain_state(mask_key, x0, token_chain, k, self.mask_id)
        logits, y0_hat = model.denoiser(x_t, latent_y_t(noise_key, latent_times, k), full(grid[k]),
                                        full(latent_times[k]))
        return {"elbo_x": token_kl(logits, x_t, k),
                "elbo_y": self._latent_stage_term(latent_times, k, per_sequence_sq(y0_hat, y0), dims)}

      terms = discrete_bound.sum_over_stages(joint_stage, steps + 1, x_key)  # not `key`: enc_key came from it
    entropy = dims * 0.5 * jnp.log(2 * jnp.pi * jnp.e * self._sigma0(model) ** 2)
    elbo_y = terms["elbo_y"] + self.latent_schedule.prior_kl(y0) - entropy
    return {"nelbo": terms["elbo_x"] + elbo_y, "elbo_x": terms["elbo_x"], "elbo_y": elbo_y}

  def _latent_stage_term(self, times, k, sq_err, dims):
    """Stage k < N: the Gaussian step KL from times[k] to times[k + 1]; stage N: the decoder."""
    last = times.shape[0] - 1
    step = discrete_bound.gaussian_step_kl(self.latent_schedule, times[k], times[jnp.minimum(k + 1, last)], sq_err)
    decoder = discrete_bound.gaussian_decoder_nll(self.latent_schedule, times[last], sq_err, dims)
    return jnp.where(k < last, step, decoder)

  def _sigma0(self, model):
    if self.lat.sigma0_mode == "fixed":
      return jnp.float32(self.lat.sigma0)
    if self.lat.sigma0_mode == "learned":
      return jnp.exp(model.encoder.log_sigma0[...])
    return None

  def _encoder_entropy(self, model, dims):
    """H(q(y0 | x0)) per sequence for the Gaussian encoder, or None when deterministic."""
    sigma0 = self._sigma0(model)
    return None if sigma0 is None else dims * 0.5 * jnp.log(2 * jnp.pi * jnp.e * sigma0**2)

  def _latent_bound(self, model, y0, sq_err, t_y, dt_y):
    """Per-sequence elbo_y along the path t_y(u), u in [eps, 1]: the continuous-time
    diffusion term (1 - eps) (-SNR'(t_y)/2) dt_y ||y0hat - y0||^2 (dt_y: dt_y/du times any
    importance weight of u's draw), the prior KL at t_y = 1, the Gaussian decoder at the
    path's end t_y(eps), minus the encoder entropy."""
    schedule, dims = self.latent_schedule, y0[0].size
    _, t_end = self._end_times(y0.shape[0])
    bound = ((1.0 - self.schedule.eps) * schedule.elbo_weight(t_y) * dt_y * sq_err
             + schedule.prior_kl(y0) + schedule.decoder_nll(t_end, dims))
    entropy = self._encoder_entropy(model, dims)
    return bound if entropy is None else bound - entropy

  def _terms(self, model, x0, key, training):
    keys = jax.random.split(key, 6)  # as before the bound's end terms: training draws are unchanged
    end_keys = jax.random.split(jax.random.fold_in(key, 6), 2)
    batch = x0.shape[0]
    if training:
      t_x, t_y, dt_y = self._times(keys[0], batch, training)
      u_weight = 1.0
    else:  # one path u -> (u, t_y(u)), u log-uniform for the Gaussian term's variance
      t_x, u_weight = masking.log_uniform_times(keys[0], batch, self.schedule.eps)
      t_y, dt_y = self._latent_path(t_x)
    x_t = self._masked_tokens(keys[1], x0, t_x, training)
    y0, target = self._clean_latent(model, x0, x_t, keys[2], training)
    keep = self._keep_latent(keys[3], batch, training)
    y0_in = jnp.where(keep[:, None, None], y0, 0.0)
    y_t = jnp.where(keep[:, None, None], gaussian.noisy(self.latent_schedule, y0, jax.random.normal(keys[4], y0.shape), t_y), 0.0)
    if self.sequential:  # the token denoiser sees the clean latent; g_psi learns the latent
      logits, _ = model.denoiser(x_t, y0_in, t_x, jnp.zeros_like(t_y))
      y0_hat = model.latent_denoiser(y_t, t_y)
    else:
      logits, y0_hat = model.denoiser(x_t, y_t, t_x, t_y)
    elbo_x, loss_x = self._token_terms(logits, x0, x_t, t_x, training)
    if not training:
      _, t_y_end = self._end_times(batch)
      if self.sequential:  # the token phase runs with the clean latent
        fill_logits = lambda x, t: model.denoiser(x, y0, t, jnp.zeros_like(t))[0]
      else:  # the final call sees the latent where the path ends
        y_end = gaussian.noisy(self.latent_schedule, y0, jax.random.normal(end_keys[0], y0.shape), t_y_end)
        fill_logits = lambda x, t: model.denoiser(x, y_end, t, t_y_end)[0]
      elbo_x = u_weight * elbo_x + self._token_fill(end_keys[1], x0, fill_logits)
    sq_err = per_sequence_sq(y0_hat, y0)
    weight = self.latent_schedule.elbo_weight(t_y) * dt_y if self.lat.y_weighting == "elbo" else 1.0
    # (choice) L_y trains the latent denoiser only: through its target it would also pull
    # the encoder toward a constant y0, which is trivially predictable (seen on binsaw:
    # the latent collapsed and carried nothing). The encoder learns from L_x (and the KL).
    # A learned sigma0 does get L_y's gradient, with the entropy below: both are its part
    # of the ELBO, and without the entropy the loss only ever shrinks sigma0 (collapse).
    loss_y = jnp.where(keep, weight * per_sequence_sq(y0_hat, target), 0.0)
    extra = 0.5 * self.lat.kl_weight * jnp.sum(jnp.square(y0))
    if self.lat.sigma0_mode == "learned":
      extra = extra - batch * self._encoder_entropy(model, y0[0].size)
    return {"elbo_x": elbo_x, "elbo_y": self._latent_bound(model, y0, sq_err, t_y, u_weight * dt_y),
            "loss_x": loss_x, "loss_y": loss_y, "extra": extra, "latent_input": (y0, None),
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
    latent_time = lambda t: self._latent_path(t)[0]
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
  is_bound = True  # deterministic quantiser: -log p(x0) <= -log p(x0, VQ(x0)) <= elbo_x + elbo_y
  bound_statement = "variational bound (deterministic quantiser: -log p(x0) <= elbo_x + elbo_y)"

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

  def _code_nll(self, logits_y, ids, codes_t):
    return masking.masked_token_nll(logits_y, ids, codes_t, self.code_mask, self.code_mask)

  def _code_terms(self, logits_y, ids, codes_t, t_y, dt_y, training):
    """(per-sequence code NELBO, its training loss). Evaluation: the bound's integral over
    u, so the code rate w_y(t_y) carries dt_y/du (a time change of a masked process needs
    its Jacobian like any other: without it a = 0.5 / 2 gave 1.83 / 2.30 for log 8 = 2.08)."""
    nll = self._code_nll(logits_y, ids, codes_t)
    if not training:
      return masking.diffusion_term(nll, t_y, self.code_schedule, dt_y), nll.sum(-1)
    return masking.nelbo_per_sequence(nll, t_y, self.code_schedule), nll.sum(-1)

  def _masked_codes(self, key, ids, t_y, training):
    keep = self.code_schedule.alpha(t_y) if training else masking.keep_probability(self.code_schedule, t_y)
    return masking.mask_tokens(key, ids, keep, self.code_mask)

  def _terms(self, model, x0, key, training):
    keys = jax.random.split(key, 6)  # as before the bound's end terms: training draws are unchanged
    batch = x0.shape[0]
    t_x, t_y, dt_y = self._times(keys[0], batch, training)
    x_t = self._masked_tokens(keys[1], x0, t_x, training)
    z_e = self._encode(model, x0, x_t, keys[2], training)
    ids, z_q = model.quantizer(z_e, update=training)
    z = vq.straight_through(z_e, z_q)
    keep = self._keep_latent(keys[3], batch, training)
    codes_t = self._masked_codes(keys[4], ids, t_y, training)
    codes_t = jnp.where(keep[:, None], codes_t, self.code_mask)  # dropped: every code masked
    if self.sequential:
      # tokens given clean codes (t_y = 0); codes given all-masked tokens (t_x = 1)
      clean = jnp.where(keep[:, None], ids, self.code_mask)
      logits, _ = model.denoiser(x_t, z, t_x, jnp.zeros_like(t_y), clean == self.code_mask)
      all_masked = jnp.full_like(x0, self.mask_id)
      _, logits_y = model.denoiser(all_masked, z, jnp.ones_like(t_x), t_y, codes_t == self.code_mask)
    else:
      logits, logits_y = model.denoiser(x_t, z, t_x, t_y, codes_t == self.code_mask)
    elbo_x, loss_x = self._token_terms(logits, x0, x_t, t_x, training)
    elbo_y, nll_y = self._code_terms(logits_y, ids, codes_t, t_y, dt_y, training)
    if not training:
      end_keys = jax.random.split(jax.random.fold_in(key, 6), 2)
      elbo_x, elbo_y = self._end_terms(model, x0, ids, z, end_keys, elbo_x, elbo_y)
    loss_y = jnp.where(keep, elbo_y if self.train_loss == "nelbo" else nll_y, 0.0)
    commit = vq.commitment_loss(z_e, z_q, self.lat.commitment) * x0.shape[0]
    return {"elbo_x": elbo_x, "elbo_y": elbo_y, "loss_x": loss_x, "loss_y": loss_y, "extra": commit,
            "latent_input": self._code_vectors(model, ids),
            "metrics": dict(vq.usage_metrics(ids, self.code_mask), commitment=commit / batch)}

  has_nstep_bound = True

  def _end_terms(self, model, x0, ids, z, keys, elbo_x, elbo_y):
    """Adds the final fills: tokens at t_x = eps (joint: with the codes where the path
    ends; sequential: with the clean codes) and, sequential only, the code phase's own fill
    at t_y(eps) with every token masked. z carries the clean code vectors; masked slots are
    replaced inside the denoiser."""
    batch = x0.shape[0]
    t_x_end, t_y_end = self._end_times(batch)
    codes_end = self._masked_codes(keys[0], ids, t_y_end, training=False)
    if self.sequential:
      clean = jnp.zeros(ids.shape, bool)
      fill_logits = lambda x, t: model.denoiser(x, z, t, jnp.zeros_like(t), clean)[0]
      all_masked = jnp.full_like(x0, self.mask_id)
      _, logits_y = model.denoiser(all_masked, z, jnp.ones_like(t_x_end), t_y_end, codes_end == self.code_mask)
      elbo_y = elbo_y + masking.fill_term(self._code_nll(logits_y, ids, codes_end))
    else:
      fill_logits = lambda x, t: model.denoiser(x, z, t, t_y_end, codes_end == self.code_mask)[0]
    return elbo_x + self._token_fill(keys[1], x0, fill_logits), elbo_y

  def nstep_nelbo(self, model, x0, key, steps, latent_steps=0):
    """The N-step bound of the temperature-1 sampler, per sequence [B] (nats), along the
    sampler's own path: -log p(x0) <= -log p(x0, y0 = VQ(x0)) (the quantiser is deterministic
    at evaluation) <= elbo_x + elbo_y, each a sum of per-stage KLs (discrete_bound).

    Joint: one chain on the token grid, codes at their path's times (_latent_path); the step factorises over
    token and code positions given the state. The sampler's final call fills only the tokens;
    the bound's chain also fills the remaining codes from that call's code logits, which
    leaves the token output's distribution unchanged (nothing reads the codes afterwards).
    Sequential: N_y = latent_steps (0: N) code stages with every token masked (t_x = 1),
    then N token stages given the clean codes (t_y = 0), as `_sample_sequential`."""
    ids, _ = model.quantizer(model.encoder(x0), update=False)
    code_key, token_key = jax.random.split(key)
    token_chain = discrete_bound.mask_chain(self.schedule, sampling.time_grid(steps, self.schedule.eps))
    if self.sequential:
      code_steps = latent_steps or steps
      code_chain = discrete_bound.mask_chain(self.code_schedule, sampling.time_grid(code_steps, self.schedule.eps))
      all_masked = jnp.full_like(x0, self.mask_id)

      def code_stage(k, key):
        codes_t = discrete_bound.chain_state(key, ids, code_chain, k, self.code_mask)
        return {"elbo_y": self._stage_kls(model, x0, ids, all_masked, codes_t, 1.0, code_chain.times[k],
                                          0.0, code_chain.reveal[k])[1]}

      def token_stage(k, key):
        x_t = discrete_bound.chain_state(key, x0, token_chain, k, self.mask_id)
        return {"elbo_x": self._stage_kls(model, x0, ids, x_t, ids, token_chain.times[k], 0.0,
                                          token_chain.reveal[k], 0.0)[0]}

      terms = dict(discrete_bound.sum_over_stages(code_stage, code_steps + 1, code_key),
                   **discrete_bound.sum_over_stages(token_stage, steps + 1, token_key))
    else:
      grid = sampling.time_grid(steps, self.schedule.eps)
      code_chain = discrete_bound.mask_chain(self.code_schedule, self._latent_path(grid)[0])

      def joint_stage(k, key):
        x_key, y_key = jax.random.split(key)
        x_t = discrete_bound.chain_state(x_key, x0, token_chain, k, self.mask_id)
        codes_t = discrete_bound.chain_state(y_key, ids, code_chain, k, self.code_mask)
        kl_x, kl_y = self._stage_kls(model, x0, ids, x_t, codes_t, token_chain.times[k], code_chain.times[k],
                                     token_chain.reveal[k], code_chain.reveal[k])
        return {"elbo_x": kl_x, "elbo_y": kl_y}

      terms = discrete_bound.sum_over_stages(joint_stage, steps + 1, key)
    return {"nelbo": terms["elbo_x"] + terms["elbo_y"], **terms}

  def _stage_kls(self, model, x0, ids, x_t, codes_t, t_x, t_y, reveal_x, reveal_y):
    """(token KL, code KL) [B] of one factorised stage: r * sum over masked of -log p."""
    batch = x0.shape[0]
    vectors, masked = self._code_vectors(model, codes_t)
    logits, logits_y = model.denoiser(x_t, vectors, jnp.full((batch,), t_x), jnp.full((batch,), t_y), masked)
    nll_x = masking.masked_token_nll(logits, x0, x_t, self.vocab_size, self.mask_id)
    nll_y = masking.masked_token_nll(logits_y, ids, codes_t, self.code_mask, self.code_mask)
    return reveal_x * nll_x.sum(-1), reveal_y * nll_y.sum(-1)

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
    code_time = lambda t: self._latent_path(t)[0]

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
