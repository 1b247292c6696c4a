"""The one reverse process of masked diffusion (method.md §1), jit-able end to end.

`ancestral_sample` is the only token loop: time grid, key splitting, the unmasking step,
the output cache, the final fill and the NFE count live here. A method plugs its latent
part in: nothing (MDLM), a z closed over by the denoiser (VMD), or a `LatentChannel`
carried through the loop with its own step (VADD's fresh z, joint LADD's latent).
Positions given to the sampler (prompt, suffix, infill template) start unmasked and are
never changed, because the unmasking step and the fill copy every unmasked position.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

FREE = -1  # in a `clamped` array: a position the sampler generates
NOISE_BITS = (32, 64)
LATENT_INITS = ("prior", "encoder", "resample")


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  steps: int = 128
  temperature: float = 1.0
  final_fill: str = "sample"  # or "argmax"
  cache: bool = True  # reuse the last call when no token changed (time-free denoisers)
  latent_steps: int = 0  # LADD sequential schedule: N_y latent steps (0 = same as steps)
  latent_sampler: str = "ddim"  # LADD Gaussian latent step: ddim | ancestral
  top_k: int = 0  # keep the k most probable tokens per position (0 = all)
  top_p: float = 1.0  # keep the most probable tokens holding this much mass (1 = all); tokens only
  noise_bits: int = 32  # random bits per Gumbel draw: 32 (float32 uniform) | 64
  latent_init: str = "prior"  # a latent drawn before the tokens: prior | encoder (LADD) | resample (VMD)
  latent_candidates: int = 16  # latent_init "resample": prior draws weighed by the clamped tokens

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
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.noise_bits not in NOISE_BITS:
      raise ValueError(f"noise_bits must be one of {NOISE_BITS}, got {self.noise_bits}")
    if self.latent_init not in LATENT_INITS:
      raise ValueError(f"latent_init must be one of {LATENT_INITS}, got {self.latent_init!r}")
    if self.latent_candidates < 1:
      raise ValueError(f"latent_candidates must be >= 1, got {self.latent_candidates}")

  @property
  def num_latent_steps(self):
    return self.latent_steps or self.steps

  @property
  def truncates(self):
    return self.top_k > 0 or self.top_p < 1


class LatentChannel(NamedTuple):
  """A latent carried through the token loop. The denoiser maps (x_t, t, state) to
  (token log-probs, out); after each token step `advance(key, state, out, t, s)` takes the
  latent's own step t -> s from the same call's latent output `out`."""
  init: Any
  advance: Callable


def time_grid(steps, eps):
  """1 = t_0 > t_1 > ... > t_N = eps, uniform."""
  return jnp.linspace(1.0, eps, steps + 1, dtype=jnp.float32)


def tempered(log_probs, temperature):
  return jax.nn.log_softmax(log_probs / temperature, axis=-1)


def truncated(log_probs, top_k, top_p):
  """Normalised log-probs restricted to the top_k most probable symbols and to the nucleus
  (the most probable symbols whose mass before them is < top_p); ties at the cut stay.

  Renormalises by log1p(-removed mass), which is exactly 0 when nothing is removed, so
  top_k = V with top_p = 1 returns its input bit for bit.
  """
  ranked = jnp.sort(log_probs, axis=-1)[..., ::-1]
  threshold = jnp.full(log_probs.shape[:-1], -jnp.inf)
  if top_k > 0:
    threshold = ranked[..., min(top_k, ranked.shape[-1]) - 1]
  if top_p < 1:
    probs = jnp.exp(ranked)
    in_nucleus = jnp.cumsum(probs, axis=-1) - probs < top_p
    threshold = jnp.maximum(threshold, jnp.min(jnp.where(in_nucleus, ranked, jnp.inf), axis=-1))
  keep = log_probs >= threshold[..., None]
  removed = jnp.sum(jnp.where(keep, 0.0, jnp.exp(log_probs)), axis=-1, keepdims=True)
  return jnp.where(keep, log_probs - jnp.log1p(-removed), -jnp.inf)


def token_distribution(log_probs, settings):
  log_probs = tempered(log_probs, settings.temperature)
  if settings.truncates:
    log_probs = truncated(log_probs, settings.top_k, settings.top_p)
  return log_probs


def gumbel_from_bits(sign_bit, hi, lo):
  """Gumbel noise from 64 random bits without float64 arithmetic.

  u ~ U(0, 1) is written as v/2 (sign_bit 1) or 1 - v/2 (sign_bit 0) with v = (hi + lo 2^-32
  + 1/2) 2^-32 in (0, 1); then -log u = -log(v/2) or -log1p(-v/2), both accurate in float32
  for small v, so the tail reaches g = -log(-log u) ~ 45 (a float32 uniform stops near 16.6:
  symbols more than ~17 nats below the best are never drawn, which flatters sample
  quality; a float64 uniform stops near 37).
  """
  v = (hi.astype(jnp.float32) + (lo.astype(jnp.float32) + 0.5) * 2.0**-32) * 2.0**-32
  exponential = jnp.where(sign_bit, -jnp.log(v) + math.log(2.0), -jnp.log1p(-0.5 * v))
  return -jnp.log(exponential)


def gumbel(key, shape, noise_bits):
  if noise_bits == 32:
    return jax.random.gumbel(key, shape, dtype=jnp.float32)
  bits = jax.random.bits(key, (3,) + tuple(shape), jnp.uint32)
  return gumbel_from_bits((bits[0] & 1) == 1, bits[1], bits[2])


def categorical(key, log_weights, noise_bits=32):
  """Gumbel-max in float32: low-precision noise lowers sample entropy."""
  noise = gumbel(key, log_weights.shape, noise_bits)
  return jnp.argmax(log_weights.astype(jnp.float32) + noise, axis=-1).astype(jnp.int32)


def unmask_step(key, x_t, log_probs, alpha_t, alpha_s, mask_id, noise_bits=32):
  """One reverse step t -> s for masked positions; unmasked positions are copied.

  A masked position becomes v with prob p(v)(alpha_s - alpha_t)/(1 - alpha_t) and stays
  masked with prob (1 - alpha_s)/(1 - alpha_t); the common 1/(1 - alpha_t) cancels.
  """
  log_unmask = log_probs + jnp.log(alpha_s - alpha_t)
  is_mask_id = jnp.arange(log_probs.shape[-1]) == mask_id
  log_weights = jnp.where(is_mask_id, jnp.log(1.0 - alpha_s), log_unmask)
  proposal = categorical(key, log_weights, noise_bits)
  return jnp.where(x_t == mask_id, proposal, x_t)


def fill_masks(key, x_t, log_probs, mask_id, final_fill, noise_bits=32):
  if final_fill == "argmax":
    choice = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
  else:
    choice = categorical(key, log_probs, noise_bits)
  return jnp.where(x_t == mask_id, choice, x_t)


def settings_record(settings, cache):
  """The token sampler's settings as every method records them; `cache`: whether reuse
  can apply (not with a time-conditioned network or a latent that changes every step)."""
  return {"steps": settings.steps, "N_x": settings.steps, "temperature": settings.temperature,
          "top_k": settings.top_k, "top_p": settings.top_p, "final_fill": settings.final_fill,
          "noise_bits": settings.noise_bits, "cache": settings.cache and cache}


def initial_tokens(shape, mask_id, clamped=None):
  """All MASK, except the clamped tokens (`clamped` int, broadcastable to shape, FREE
  where the sampler generates)."""
  x = jnp.full(shape, mask_id, dtype=jnp.int32)
  if clamped is None:
    return x
  clamped = jnp.broadcast_to(jnp.asarray(clamped, jnp.int32), shape)
  return jnp.where(clamped == FREE, x, clamped)


def ancestral_sample(denoise, key, shape, schedule, settings, mask_id, time_conditioned,
                     clamped=None, latent=None):
  """Draws sequences from all-MASK (but the clamped positions); returns (tokens [B, L],
  number of denoiser calls).

  `denoise(x_t, t)` returns SUBS log-probabilities [B, L, Vp]; with a `latent` channel it
  is `denoise(x_t, t, state) -> (log-probs, latent output)`. With a time-free denoiser, no
  carried latent and `settings.cache`, a step whose input equals the last evaluated input
  reuses that output, which is exactly the same distribution.
  """
  grid = time_grid(settings.steps, schedule.eps)
  x = initial_tokens(shape, mask_id, clamped)
  reuse_allowed = settings.cache and not time_conditioned and latent is None
  if latent is None:
    call, state, advance = (lambda x, t, state: (denoise(x, t), None)), None, None
  else:
    call, (state, advance) = denoise, latent

  def fresh(x, t, state):
    log_probs, out = call(x, t, state)
    return token_distribution(log_probs, settings), out

  def evaluate(x, t, state, cached, changed):
    if not reuse_allowed:
      return fresh(x, t, state) + (jnp.int32(1),)
    return jax.lax.cond(
        changed,
        lambda: fresh(x, t, state) + (jnp.int32(1),),
        lambda: (cached, None, jnp.int32(0)),
    )

  def body(i, carry):
    x, state, cached, changed, nfe, key = carry
    if advance is None:
      key, x_key = jax.random.split(key)
    else:
      key, x_key, latent_key = jax.random.split(key, 3)
    t, s = grid[i], grid[i + 1]
    log_probs, out, calls = evaluate(x, t, state, cached, changed)
    x_new = unmask_step(x_key, x, log_probs, schedule.alpha(t), schedule.alpha(s), mask_id,
                        settings.noise_bits)
    if advance is not None:
      state = advance(latent_key, state, out, t, s)
    return x_new, state, log_probs, jnp.any(x_new != x), nfe + calls, key

  cached = jnp.zeros(jax.eval_shape(fresh, x, grid[0], state)[0].shape, jnp.float32)
  init = (x, state, cached, jnp.bool_(True), jnp.int32(0), key)
  x, state, cached, changed, nfe, key = jax.lax.fori_loop(0, settings.steps, body, init)
  log_probs, _, calls = evaluate(x, grid[-1], state, cached, changed)
  x = fill_masks(key, x, log_probs, mask_id, settings.final_fill, settings.noise_bits)
  return x, nfe + calls
