"""VMD: variational masked diffusion (method.md §4).

One global latent z ~ N(0, I) per sequence, drawn once before sampling and held fixed over
all steps; the denoiser is p(x0 | x_t, z). Training minimises a VAE-style bound: the §1
w(t)-weighted masked cross-entropy given z ~ q(z | x0, x_t), plus KL(q || N(0, I)) once per
sequence (lambda-annealed like VADD).

(choice) vae.vmd_posterior: "x0_xt" (default, as in the method description) lets the
posterior see the masked positions of x_t; "x0" gives q(z | x0), for which the reported
"nelbo" is a strict bound on -log p(x0) (with an x_t-dependent posterior the same z cannot
serve every t, so it is the training objective rather than a bound).
"""

import dataclasses

import jax
import jax.numpy as jnp

from ladd.diffusion import masking, sampling
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

  def posterior_mask(self, x_t):
    if self.posterior_input == "x0":
      return jnp.zeros(x_t.shape, jnp.bool_)
    return super().posterior_mask(x_t)

  def weighted_terms(self, t, recon, kl):
    """Reconstruction weighted as in §1; the KL of the one global latent is paid once."""
    return self.schedule.nelbo_weight(t) * recon, kl

  def sample(self, model, key, num_samples, settings, clamped=None):
    """z ~ N(0, I) once, then the §1 ancestral sampler conditioned on it. The output cache
    stays valid because z is fixed; argmax decoding also fills the last step by argmax.
    (choice) With clamped tokens z still comes from the prior: the posterior q(z | x0, m_t)
    reads x0 at every position, masked ones included, so it cannot take a partial x0."""
    z_key, key = jax.random.split(key)
    z = jax.random.normal(z_key, (num_samples, self.latent_dim), jnp.float32)

    def denoise(x_t, t):
      logits = model(x_t, jnp.full((num_samples,), t), z)
      log_probs = masking.subs_log_probs(logits, x_t, self.vocab_size, self.mask_id)
      return argmax_log_probs(log_probs) if self.decoding == "argmax" else log_probs

    tokens, nfe = sampling.ancestral_sample(
        denoise, key, (num_samples, self.seq_len), self.schedule, self._settings_used(settings),
        self.mask_id, self.model_cfg.time_conditioning, clamped)
    return tokens, {"nfe": nfe}

  def _settings_used(self, settings):
    return dataclasses.replace(settings, final_fill="argmax") if self.decoding == "argmax" else settings

  def sampler_used(self, settings):
    if settings.latent_init != "prior":
      raise ValueError("VMD draws z from the prior: its posterior needs x0 at every position")
    return dict(super().sampler_used(self._settings_used(settings)), latent_init="prior",
                sampler=f"ancestral, global z, {self.decoding} decoding")
