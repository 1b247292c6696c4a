"""Variance-preserving Gaussian process for LADD's continuous latent (method.md §2.1).

y_t = alpha_bar(t) y0 + sigma_bar(t) xi with alpha_bar^2 = (1 - 2 eps) g(t) + eps and
sigma_bar^2 = 1 - alpha_bar^2; the clamp keeps the SNR finite at both ends.
"""

import dataclasses

import jax
import jax.numpy as jnp

GAUSSIAN_SCHEDULES = ("sqrt", "linear", "cosine", "square")


@dataclasses.dataclass(frozen=True)
class GaussianSchedule:
  kind: str = "sqrt"  # g(t) = sqrt(1 - t): the latent stays cleaner than the tokens
  eps: float = 1e-4

  def __post_init__(self):
    if self.kind not in GAUSSIAN_SCHEDULES:
      raise ValueError(f"unknown latent schedule {self.kind!r}; choose one of {GAUSSIAN_SCHEDULES}")

  def _g(self, t):
    if self.kind == "sqrt":
      return jnp.sqrt(jnp.maximum(1.0 - t, 0.0))
    if self.kind == "linear":
      return 1.0 - t
    if self.kind == "cosine":  # (choice) the usual cosine schedule alpha_bar = cos(pi t / 2)
      return jnp.cos(jnp.pi / 2 * t) ** 2
    return 1.0 - t**2

  def _g_derivative(self, t):
    if self.kind == "sqrt":  # integrable 1/sqrt(1 - t) at t = 1; the floor only guards t == 1.0
      return -0.5 * jax.lax.rsqrt(jnp.maximum(1.0 - t, 1e-12))
    if self.kind == "linear":
      return -jnp.ones_like(t)
    if self.kind == "cosine":
      return -jnp.pi / 2 * jnp.sin(jnp.pi * t)
    return -2.0 * t

  def alpha_sq(self, t):
    return (1.0 - 2 * self.eps) * self._g(t) + self.eps

  def alpha(self, t):
    return jnp.sqrt(self.alpha_sq(t))

  def sigma(self, t):
    return jnp.sqrt(1.0 - self.alpha_sq(t))

  def snr(self, t):
    a2 = self.alpha_sq(t)
    return a2 / (1.0 - a2)

  def elbo_weight(self, t):
    """-SNR'(t) / 2, analytic: int_{t0}^1 w(t) ||y0hat - y0||^2 dt is the continuous-time
    diffusion term of the latent's ELBO (VDM) on [t0, 1]. Defined for t in [0, 1] only."""
    a2 = self.alpha_sq(t)
    return -0.5 * (1.0 - 2 * self.eps) * self._g_derivative(t) / jnp.square(1.0 - a2)

  def prior_kl(self, y0):
    """KL(q(y_1 | y0) || N(0, I)) summed over all latent dims: [B]."""
    a2, s2 = self.alpha_sq(1.0), 1.0 - self.alpha_sq(1.0)
    sq = jnp.sum(jnp.square(y0).reshape(y0.shape[0], -1), -1)
    dims = y0[0].size
    return 0.5 * (a2 * sq + dims * (s2 - 1.0 - jnp.log(s2)))

  def decoder_nll(self, t, dims):
    """E[-log N(y0; y_t / alpha_t, sigma_t^2 / alpha_t^2 I)] under y_t ~ q(y_t | y0), exact:
    1/2 d log(2 pi e sigma_t^2 / alpha_t^2), the Gaussian decoder at the latent path's end
    (about 1/2 d log(2 pi e eps / (1 - eps)) at t = 0)."""
    a2 = self.alpha_sq(t)
    return 0.5 * dims * jnp.log(2 * jnp.pi * jnp.e * (1.0 - a2) / a2)


def time_shift(t, shift):
  """t' = a t / (1 + (a - 1) t): a < 1 keeps the latent cleaner, a = 1 is the identity."""
  return shift * t / (1.0 + (shift - 1.0) * t)


def latent_path(u, shift, lead, eps):
  """(t_y, dt_y/du): the latent's time on the sampler's one noise path u in [eps, 1].

  t_y = time_shift(v, shift) with v = max((u - lead) / (1 - lead), eps): with lead > 0 the
  latent leads, reaching its path's end v = eps at u = lead + eps (1 - lead), while about a
  fraction `lead` of the tokens is still masked, and rests there (dt_y/du = 0) for the rest.
  The end is the shift path's own (time_shift(eps)), never t = 0: finite SNR and finite
  masking weights wherever dt_y/du multiplies them. lead = 0 is time_shift(u) exactly."""
  r = (u - lead) / (1.0 - lead)
  v = jnp.maximum(r, eps)
  dv_du = jnp.where(r >= eps, 1.0 / (1.0 - lead), 0.0)
  return time_shift(v, shift), shift / jnp.square(1.0 + (shift - 1.0) * v) * dv_du


def broadcast(v, like):
  return jnp.reshape(v, jnp.shape(v) + (1,) * (like.ndim - jnp.ndim(v)))


def noisy(schedule, y0, noise, t):
  """y_t for per-example times t [B] (or a scalar)."""
  return broadcast(schedule.alpha(t), y0) * y0 + broadcast(schedule.sigma(t), y0) * noise


def ddim_step(schedule, y_t, y0_hat, t, s):
  """y_s = a_s y0hat + s_s (y_t - a_t y0hat) / s_t: exact when y0hat is the true y0."""
  eps_hat = (y_t - schedule.alpha(t) * y0_hat) / schedule.sigma(t)
  return schedule.alpha(s) * y0_hat + schedule.sigma(s) * eps_hat


def ancestral_step(schedule, key, y_t, y0_hat, t, s):
  """Draw from the Gaussian posterior q(y_s | y_t, y0 = y0hat)."""
  a_ts = schedule.alpha(t) / schedule.alpha(s)
  var_t, var_s = 1.0 - schedule.alpha_sq(t), 1.0 - schedule.alpha_sq(s)
  var_ts = var_t - a_ts**2 * var_s
  mean = a_ts * var_s / var_t * y_t + schedule.alpha(s) * var_ts / var_t * y0_hat
  std = jnp.sqrt(var_ts * var_s / var_t)
  return mean + std * jax.random.normal(key, y_t.shape, jnp.float32)
