"""VADD: variational autoencoding discrete diffusion (method.md §3).

Every reverse step gets a fresh Gaussian latent z ~ N(0, I) that enters the DiT through
adaLN, so one step samples from a mixture of factorised distributions and can emit
correlated tokens. Training uses the double ELBO: inside the §1 NELBO the masked-token
cross-entropy becomes the per-t VAE bound E_r[-log p(x0 | x_t, z)] + lambda KL(r || N(0, I))
with the mask-aware recognition model r(z | x0, m_t) and lambda annealed 0 -> 1.

`LatentVariableDiffusion` holds what VADD and VMD (ladd.methods.vmd) share: the
network, the noised batch, the reparameterised reconstruction and KL; the subclasses
differ in how the KL is weighted, what the posterior sees, and how z is drawn when sampling.
"""

import math

import jax
import jax.numpy as jnp

from ladd.diffusion import discrete_bound, gaussian_latent, masking, sampling
from ladd.methods.mdlm import MaskedDiffusion
from ladd.models.dit import train_flops_per_token
from ladd.models.recognition import VariationalDenoiser, recognition_config

ACTIVE_DIM_NATS = 0.01  # a latent dim whose mean KL is below this carries no information


class LatentVariableDiffusion(MaskedDiffusion):
  """Masked diffusion with a Gaussian latent z and an amortised posterior over it."""

  def __init__(self, config, vocab_size):
    super().__init__(config, vocab_size)
    vae = config.vae
    if vae.latent_dim < 1 or vae.importance_samples < 1 or vae.kl_anneal_steps < 0:
      raise ValueError("vae.latent_dim and vae.importance_samples must be >= 1 and"
                       f" vae.kl_anneal_steps >= 0, got {vae.latent_dim},"
                       f" {vae.importance_samples}, {vae.kl_anneal_steps}")
    self.latent_dim = vae.latent_dim
    self.recognition_cfg = recognition_config(self.model_cfg, vae)
    self.kl_anneal_steps = vae.kl_anneal_steps
    self.importance_samples = vae.importance_samples

  def init_model(self, rngs):
    return VariationalDenoiser(self.model_cfg, self.recognition_cfg, self.latent_dim, rngs)

  @property
  def flops_per_token(self):
    # The recognition trunk is counted as a DiT of its size (its pooled head is smaller).
    return (train_flops_per_token(self.model_cfg, self.seq_len)
            + train_flops_per_token(self.recognition_cfg, self.seq_len))

  def describe(self):
    return dict(super().describe(), latent_dim=self.latent_dim,
                kl_anneal_steps=self.kl_anneal_steps, importance_samples=self.importance_samples)

  def posterior_mask(self, x_t):
    """What the posterior is told about x_t: the masked positions m_t."""
    return x_t == self.mask_id

  def weighted_terms(self, t, recon, kl):
    """(reconstruction term, KL term) of the per-sequence bound; subclasses weight them."""
    raise NotImplementedError

  def _terms(self, model, x0, key, num_z=1):
    """Noised batch and per-sequence terms with num_z posterior samples per sequence.

    Returns t [B], x_t [B, L], recon [num_z, B] (sum of -log p(x0^i | x_t, z) over masked
    positions), the posterior (mean, log_var) [B, d] and the samples z [num_z, B, d]. The t
    and x_t draws use the same keys as MDLM, so the two methods see identical noise.
    """
    t_key, mask_key = jax.random.split(key)
    z_key = jax.random.fold_in(key, 2)  # fold_in(key, 0 or 1) would equal the split keys
    t = masking.stratified_times(t_key, x0.shape[0], self.schedule.eps)
    x_t = masking.mask_tokens(mask_key, x0, self.schedule.alpha(t), self.mask_id)
    mean, log_var = model.recognition(x0, self.posterior_mask(x_t))
    z = gaussian_latent.reparameterize(z_key, jnp.broadcast_to(mean, (num_z,) + mean.shape),
                                       jnp.broadcast_to(log_var, (num_z,) + log_var.shape))

    def repeat(a):  # num_z copies along the batch axis, matching z.reshape(-1, d)
      return jnp.tile(a, (num_z,) + (1,) * (a.ndim - 1))

    logits = model(repeat(x_t), repeat(t), z.reshape(-1, self.latent_dim))
    nll = masking.masked_token_nll(logits, repeat(x0), repeat(x_t), self.vocab_size, self.mask_id)
    return t, x_t, nll.sum(-1).reshape(num_z, -1), (mean, log_var), z

  def loss(self, model, x0, key, step):
    kl_weight = gaussian_latent.kl_anneal_weight(step, self.kl_anneal_steps)
    t, x_t, recon, (mean, log_var), _ = self._terms(model, x0, key)
    kl_per_dim = gaussian_latent.kl_to_standard_normal(mean, log_var)
    bound_recon, bound_kl = self.weighted_terms(t, recon[0], kl_per_dim.sum(-1))
    if self.train_loss == "nelbo":
      recon_term, kl_term = bound_recon, bound_kl
    else:
      recon_term, kl_term = recon[0], kl_per_dim.sum(-1)
    num_tokens = x0.size
    loss = (recon_term + kl_weight * kl_term).sum() / num_tokens
    metrics = {
        "nelbo_per_token": (bound_recon + bound_kl).sum() / num_tokens,
        "kl_weight": kl_weight,
        "kl_per_sequence": kl_per_dim.sum(-1).mean(),
        # Posterior-collapse diagnostic: dims whose batch-mean KL carries information.
        "active_latent_dims": jnp.sum(kl_per_dim.mean(0) > ACTIVE_DIM_NATS),
        "mask_fraction": jnp.mean(x_t == self.mask_id),
    }
    return loss, metrics

  def nelbo(self, model, x0, key):
    """The lambda = 1 objective per sequence [B] with its "recon" and "kl" terms (nats)."""
    t, _, recon, (mean, log_var), _ = self._terms(model, x0, key)
    recon_term, kl_term = self.weighted_terms(
        t, recon[0], gaussian_latent.kl_to_standard_normal(mean, log_var).sum(-1))
    return {"nelbo": recon_term + kl_term, "recon": recon_term, "kl": kl_term}


class VariationalAutoencodingDiffusion(LatentVariableDiffusion):
  name = "vadd"

  @property
  def quantities(self):
    """The double ELBO is a training objective, not a bound: in continuous time the
    masked-diffusion bound rests on per-token marginals, and the joint -log p(x0^M | x_t, z)
    in its place breaks the chain rule (an ideal z-mixture scores 1/2 log V on x1 = x2 ~ U{V};
    tests/test_bounds.py). Its bound is the N-step ELBO of the sampler (method.md §3)."""
    return {"nelbo": "objective", "recon": "diagnostic", "kl": "diagnostic"}

  @property
  def bound_statement(self):
    return "none: the double ELBO is a training objective (method.md §3)"

  def weighted_terms(self, t, recon, kl):
    """Both terms sit inside the w(t)-weighted NELBO: the KL is paid at every t."""
    weight = self.schedule.nelbo_weight(t)
    return weight * recon, weight * kl

  def nelbo(self, model, x0, key):
    """With vae.importance_samples = K > 1, "nelbo" is the importance-weighted per-t objective
    w(t) * -log (1/K) sum_k p(x0 | x_t, z_k) p(z_k) / r(z_k); "recon" and "kl" stay the
    terms of the plain (K = 1) bound, averaged over the K samples."""
    if self.importance_samples == 1:
      return super().nelbo(model, x0, key)
    k = self.importance_samples
    t, _, recon, (mean, log_var), z = self._terms(model, x0, key, num_z=k)
    log_weights = (-recon + gaussian_latent.standard_normal_log_prob(z)
                   - gaussian_latent.diagonal_gaussian_log_prob(z, mean, log_var))
    log_likelihood = jax.nn.logsumexp(log_weights, axis=0) - math.log(k)
    weight = self.schedule.nelbo_weight(t)
    recon_term, kl_term = self.weighted_terms(
        t, recon.mean(0), gaussian_latent.kl_to_standard_normal(mean, log_var).sum(-1))
    return {"nelbo": -weight * log_likelihood, "recon": recon_term, "kl": kl_term}

  def nstep_nelbo(self, model, x0, key, steps, latent_steps=0):
    """The N-step bound of the temperature-1 sampler below, per sequence [B] (nats).

    The step's reverse is the z-mixture p(x_s | x_t) = int prod_i p(x_s^i | x_t, z) p(z) dz;
    with R the positions q reveals at the step (its (r, 1 - r) factors cancel in the KL),
    the stage term is -log int prod_{i in R} p(x0^i | x_t, z) p(z) dz, estimated with
    K = vae.importance_samples draws z_k ~ r(z | x0, m_t) as
    -log (1/K) sum_k prod_{i in R} p(x0^i | x_t, z_k) p(z_k) / r(z_k): an upper bound in
    expectation (Jensen), so the estimate stays a bound."""
    del latent_steps  # z is drawn afresh at every step; nothing is diffused
    chain = discrete_bound.mask_chain(self.schedule, sampling.time_grid(steps, self.schedule.eps))
    return discrete_bound.sum_over_stages(lambda k, key: self._stage_bound(model, x0, key, chain, k), steps + 1, key)

  def _stage_bound(self, model, x0, key, chain, k):
    mask_key, reveal_key, z_key = jax.random.split(key, 3)
    num_z, batch = self.importance_samples, x0.shape[0]
    x_t = discrete_bound.chain_state(mask_key, x0, chain, k, self.mask_id)
    revealed = discrete_bound.revealed(reveal_key, x_t, chain, k, self.mask_id)
    mean, log_var = model.recognition(x0, self.posterior_mask(x_t))
    z = gaussian_latent.reparameterize(z_key, jnp.broadcast_to(mean, (num_z,) + mean.shape),
                                       jnp.broadcast_to(log_var, (num_z,) + log_var.shape))
    repeat = lambda a: jnp.tile(a, (num_z,) + (1,) * (a.ndim - 1))
    logits = model(repeat(x_t), jnp.full((num_z * batch,), chain.times[k]), z.reshape(-1, self.latent_dim))
    nll = masking.masked_token_nll(logits, repeat(x0), repeat(x_t), self.vocab_size, self.mask_id)
    nll_revealed = jnp.where(repeat(revealed), nll, 0.0).sum(-1).reshape(num_z, batch)
    log_weights = (-nll_revealed + gaussian_latent.standard_normal_log_prob(z)
                   - gaussian_latent.diagonal_gaussian_log_prob(z, mean, log_var))
    return {"nelbo": math.log(num_z) - jax.nn.logsumexp(log_weights, axis=0)}

  def sample(self, model, key, num_samples, settings, clamped=None):
    """The §1 ancestral sampler with a fresh z ~ N(0, I) at every step (and the final fill):
    z is a latent channel whose step draws the next one. The output cache does not apply
    (the network input z changes at every step even when no token does): NFE = steps + 1."""
    z_key, key = jax.random.split(key)
    draw_z = lambda key: jax.random.normal(key, (num_samples, self.latent_dim), jnp.float32)

    def denoise(x_t, t, z):
      logits = model(x_t, jnp.full((num_samples,), t), z)
      return masking.subs_log_probs(logits, x_t, self.vocab_size, self.mask_id), None

    fresh_z = sampling.LatentChannel(draw_z(z_key), lambda key, z, out, t, s: draw_z(key))
    tokens, nfe = sampling.ancestral_sample(
        denoise, key, (num_samples, self.seq_len), self.schedule, settings, self.mask_id,
        self.model_cfg.time_conditioning, clamped, latent=fresh_z)
    return tokens, {"nfe": nfe}

  def sampler_used(self, settings):
    return dict(super().sampler_used(settings), sampler="ancestral, fresh z per step",
                cache=False)
