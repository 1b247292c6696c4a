"""Ancestral sampling for masked diffusion (method.md §1), jit-able end to end.

The denoiser is any function (x_t, t) -> SUBS log-probabilities [B, L, Vp]; latent
methods reuse `unmask_step` and `fill_masks` inside their own loops.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  steps: int = 128
  temperature: float = 1.0
  final_fill: str = "sample"  # or "argmax"
  cache: bool = True  # reuse the last call when no token changed (time-free denoisers)
  latent_steps: int = 0  # LADD sequential schedule: N_y latent steps (0 = same as steps)
  latent_sampler: str = "ddim"  # LADD Gaussian latent step: ddim | ancestral

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f"sampling steps must be >= 1, got {self.steps}")
    if self.final_fill not in ("sample", "argmax"):
      raise ValueError(f"final_fill must be 'sample' or 'argmax', got {self.final_fill!r}")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")
    if self.latent_steps < 0:
      raise ValueError(f"latent_steps must be >= 0, got {self.latent_steps}")
    if self.latent_sampler not in ("ddim", "ancestral"):
      raise ValueError(f"latent_sampler must be 'ddim' or 'ancestral', got {self.latent_sampler!r}")

  @property
  def num_latent_steps(self):
    return self.latent_steps or self.steps


def time_grid(steps, eps):
  """1 = t_0 > t_1 > ... > t_N = eps, uniform."""
  return jnp.linspace(1.0, eps, steps + 1, dtype=jnp.float32)


def tempered(log_probs, temperature):
  return jax.nn.log_softmax(log_probs / temperature, axis=-1)


def categorical(key, log_weights):
  """Gumbel-max in float32: low-precision noise lowers sample entropy."""
  gumbel = jax.random.gumbel(key, log_weights.shape, dtype=jnp.float32)
  return jnp.argmax(log_weights.astype(jnp.float32) + gumbel, axis=-1).astype(jnp.int32)


def unmask_step(key, x_t, log_probs, alpha_t, alpha_s, mask_id):
  """One reverse step t -> s for masked positions; unmasked positions are copied.

  A masked position becomes v with prob p(v)(alpha_s - alpha_t)/(1 - alpha_t) and stays
  masked with prob (1 - alpha_s)/(1 - alpha_t); the common 1/(1 - alpha_t) cancels.
  """
  log_unmask = log_probs + jnp.log(alpha_s - alpha_t)
  is_mask_id = jnp.arange(log_probs.shape[-1]) == mask_id
  log_weights = jnp.where(is_mask_id, jnp.log(1.0 - alpha_s), log_unmask)
  proposal = categorical(key, log_weights)
  return jnp.where(x_t == mask_id, proposal, x_t)


def fill_masks(key, x_t, log_probs, mask_id, final_fill):
  if final_fill == "argmax":
    choice = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
  else:
    choice = categorical(key, log_probs)
  return jnp.where(x_t == mask_id, choice, x_t)


def ancestral_sample(denoise, key, shape, schedule, settings, mask_id, time_conditioned):
  """Draws sequences from all-MASK; returns (tokens [B, L], number of denoiser calls).

  With a time-free denoiser and `settings.cache`, a step whose input equals the last
  evaluated input reuses that output, which is exactly the same distribution.
  """
  grid = time_grid(settings.steps, schedule.eps)
  x = jnp.full(shape, mask_id, dtype=jnp.int32)
  reuse_allowed = settings.cache and not time_conditioned

  def evaluate(x, t, cached, changed):
    if not reuse_allowed:
      return tempered(denoise(x, t), settings.temperature), jnp.int32(1)
    return jax.lax.cond(
        changed,
        lambda: (tempered(denoise(x, t), settings.temperature), jnp.int32(1)),
        lambda: (cached, jnp.int32(0)),
    )

  def body(i, carry):
    x, cached, changed, nfe, key = carry
    key, step_key = jax.random.split(key)
    t, s = grid[i], grid[i + 1]
    log_probs, calls = evaluate(x, t, cached, changed)
    x_new = unmask_step(step_key, x, log_probs, schedule.alpha(t), schedule.alpha(s), mask_id)
    return x_new, log_probs, jnp.any(x_new != x), nfe + calls, key

  cached = jnp.zeros(jax.eval_shape(denoise, x, grid[0]).shape, jnp.float32)
  init = (x, cached, jnp.bool_(True), jnp.int32(0), key)
  x, cached, changed, nfe, key = jax.lax.fori_loop(0, settings.steps, body, init)
  log_probs, calls = evaluate(x, grid[-1], cached, changed)
  x = fill_masks(key, x, log_probs, mask_id, settings.final_fill)
  return x, nfe + calls
