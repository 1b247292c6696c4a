"""VMD: variational masked diffusion (method.md §4).

One global latent z ~ N(0, I) per sequence, drawn once before sampling and held fixed over
all steps; the denoiser is p(x0 | x_t, z). Training minimises a VAE-style bound: the §1
w(t)-weighted masked cross-entropy given z ~ q(z | x0, x_t), plus KL(q || N(0, I)) once per
sequence (lambda-annealed like VADD).

(choice) vae.vmd_posterior: "x0_xt" (default, as in the method description, kept so that
trained models stay valid) lets the posterior see the masked positions of x_t; its "nelbo" is
the training objective, not a bound (the same z cannot serve every t: an ideal model scores
about 1/3 log V on x1 = x2 ~ U{V}). "x0" gives q(z | x0), for which "nelbo" bounds -log p(x0):
E_q[masked-diffusion bound given z, with its end terms] + KL(q || N(0, I)).
"""

import dataclasses

import jax
import jax.numpy as jnp

from ladd.diffusion import discrete_bound, gaussian_latent, masking, sampling
from ladd.methods.vadd import LatentVariableDiffusion

POSTERIORS = ("x0_xt", "x0")
DECODINGS = ("sample", "argmax")


def argmax_log_probs(log_probs):
  """All mass on the most probable symbol: the step then unmasks by argmax decoding."""
  best = jnp.argmax(log_probs, axis=-1)
  return jnp.where(jax.nn.one_hot(best, log_probs.shape[-1], dtype=jnp.bool_), 0.0, masking.NEG_INF)


class VariationalMaskedDiffusion(LatentVariableDiffusion):
  name = "vmd"

  def __init__(self, config, vocab_size):
    super().__init__(config, vocab_size)
    vae = config.vae
    if vae.vmd_posterior not in POSTERIORS or vae.vmd_decoding not in DECODINGS:
      raise ValueError(f"vae.vmd_posterior must be one of {POSTERIORS} and vae.vmd_decoding one of"
                       f" {DECODINGS}, got {vae.vmd_posterior!r}, {vae.vmd_decoding!r}")
    if vae.importance_samples != 1:
      raise ValueError("vae.importance_samples > 1 is VADD's per-t importance-weighted bound;"
                       " VMD's latent is global, set it to 1")
    self.posterior_input = vae.vmd_posterior
    self.decoding = vae.vmd_decoding

  def describe(self):
    return dict(super().describe(), posterior=self.posterior_input, decoding=self.decoding)

  @property
  def quantities(self):
    kind = "bound" if self.posterior_input == "x0" else "objective"
    return {"nelbo": kind, "recon": "diagnostic", "kl": "diagnostic"}

  @property
  def bound_statement(self):
    if self.posterior_input == "x0":
      return "variational bound: q(z | x0), continuous-time bound with end terms given z, + KL"
    return "none: with q(z | x0, x_t) the NELBO is a training objective (vae.vmd_posterior='x0' gives a bound)"

  def nelbo(self, model, x0, key):
    if self.posterior_input != "x0":
      return super().nelbo(model, x0, key)  # the lambda = 1 training objective
    z_key, key = jax.random.split(key)
    mean, log_var = model.recognition(x0, jnp.zeros(x0.shape, jnp.bool_))
    z = gaussian_latent.reparameterize(z_key, mean, log_var)  # one z serves every t

    def token_nll(x_t, t):
      return masking.masked_token_nll(model(x_t, t, z), x0, x_t, self.vocab_size, self.mask_id)

    diffusion, fill = masking.masked_diffusion_bound(token_nll, key, x0, self.schedule, self.mask_id)
    kl = gaussian_latent.kl_to_standard_normal(mean, log_var).sum(-1)
    return {"nelbo": diffusion + fill + kl, "recon": diffusion + fill, "kl": kl}

  def posterior_mask(self, x_t):
    if self.posterior_input == "x0":
      return jnp.zeros(x_t.shape, jnp.bool_)
    return super().posterior_mask(x_t)

  def weighted_terms(self, t, recon, kl):
    """Reconstruction weighted as in §1; the KL of the one global latent is paid once."""
    return self.schedule.nelbo_weight(t) * recon, kl

  def nstep_nelbo(self, model, x0, key, steps, latent_steps=0):
    """The N-step bound of the temperature-1 sampling sampler (sampled token choices even
    where vae.vmd_decoding = "argmax": argmax has no density), per sequence [B] (nats):
    -log p(x0) <= E_{z ~ q(z | x0)}[B_N(x0 | z)] + KL(q(z | x0) || N(0, I)), B_N(x0 | z) the
    factorised N-step bound given z. The proposal is the recognition model with nothing
    masked, q(z | x0), whatever vae.vmd_posterior is (any proposal gives a bound). One z per
    sequence: importance weighting over z would need exp(-B_N) with B_N estimated from
    independent per-stage draws, whose Jensen gap points the wrong way."""
    del latent_steps  # z is global; nothing is diffused
    z_key, key = jax.random.split(key)
    mean, log_var = model.recognition(x0, jnp.zeros(x0.shape, jnp.bool_))
    z = gaussian_latent.reparameterize(z_key, mean, log_var)
    chain = discrete_bound.mask_chain(self.schedule, sampling.time_grid(steps, self.schedule.eps))

    def stage(k, key):
      x_t = discrete_bound.chain_state(key, x0, chain, k, self.mask_id)
      logits = model(x_t, jnp.full((x0.shape[0],), chain.times[k]), z)
      nll = masking.masked_token_nll(logits, x0, x_t, self.vocab_size, self.mask_id)
      return chain.reveal[k] * nll.sum(-1)

    recon = discrete_bound.sum_over_stages(stage, steps + 1, key)
    kl = gaussian_latent.kl_to_standard_normal(mean, log_var).sum(-1)
    return {"nelbo": recon + kl, "recon": recon, "kl": kl}

  def sample(self, model, key, num_samples, settings, clamped=None):
    """z once, then the §1 ancestral sampler conditioned on it. The output cache stays
    valid because z is fixed; argmax decoding also fills the last step by argmax.

    z ~ N(0, I) (settings.latent_init "prior"), or, to agree with clamped tokens,
    "resample": K = settings.latent_candidates prior draws weighted by the likelihood of the
    clamped tokens under p(x0^i | all masked, z) at t = 1 (their product over the clamped
    positions), one of them drawn by weight: sampling-importance-resampling towards
    p(z | clamps), K extra calls. (The posterior q(z | x0, m_t) cannot serve: it reads x0
    at every position, masked ones included.)"""
    self.sampler_used(settings)  # rejects a latent_init VMD cannot use
    z_key, key = jax.random.split(key)
    extra_calls = 0
    if settings.latent_init == "resample":
      if clamped is None:
        raise ValueError("latent_init 'resample' weighs z by the clamped tokens: give some")
      z = self._resampled_z(model, z_key, num_samples, settings.latent_candidates, clamped)
      extra_calls = settings.latent_candidates
    else:
      z = jax.random.normal(z_key, (num_samples, self.latent_dim), jnp.float32)

    def denoise(x_t, t):
      logits = model(x_t, jnp.full((num_samples,), t), z)
      log_probs = masking.subs_log_probs(logits, x_t, self.vocab_size, self.mask_id)
      return argmax_log_probs(log_probs) if self.decoding == "argmax" else log_probs

    tokens, nfe = sampling.ancestral_sample(
        denoise, key, (num_samples, self.seq_len), self.schedule, self._settings_used(settings),
        self.mask_id, self.model_cfg.time_conditioning, clamped)
    return tokens, {"nfe": nfe + extra_calls}

  def _resampled_z(self, model, key, num_samples, candidates, clamped):
    cand_key, pick_key = jax.random.split(key)
    z = jax.random.normal(cand_key, (candidates, num_samples, self.latent_dim), jnp.float32)
    clamped = jnp.broadcast_to(jnp.asarray(clamped, jnp.int32), (num_samples, self.seq_len))
    given = clamped != sampling.FREE
    all_masked = jnp.full((num_samples, self.seq_len), self.mask_id, jnp.int32)

    def clamp_log_likelihood(z):
      logits = model(all_masked, jnp.ones((num_samples,)), z)
      log_probs = masking.subs_log_probs(logits, all_masked, self.vocab_size, self.mask_id)
      per_token = jnp.take_along_axis(log_probs, jnp.where(given, clamped, 0)[..., None], -1)[..., 0]
      return jnp.sum(jnp.where(given, per_token, 0.0), -1)

    log_weights = jax.lax.map(clamp_log_likelihood, z)  # [K, N]
    choice = sampling.categorical(pick_key, log_weights.T)
    return z[choice, jnp.arange(num_samples)]

  def _settings_used(self, settings):
    return dataclasses.replace(settings, final_fill="argmax") if self.decoding == "argmax" else settings

  def sampler_used(self, settings):
    if settings.latent_init == "encoder":
      raise ValueError("VMD has no encoder of partial sequences (its posterior needs x0 at every"
                       " position): use latent_init 'prior' or 'resample'")
    used = dict(super().sampler_used(dataclasses.replace(
        self._settings_used(settings), latent_init="prior")), latent_init=settings.latent_init,
                sampler=f"ancestral, global z, {self.decoding} decoding")
    if settings.latent_init == "resample":
      used["latent_candidates"] = settings.latent_candidates
    return used
