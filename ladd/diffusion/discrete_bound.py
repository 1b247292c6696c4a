"""The N-step (discrete-time) bound of the ancestral sampler (method.md §7).

The sampler runs on the grid 1 = t_0 > ... > t_N = eps from all-MASK: at stage k < N it
reveals each masked position with probability r_k = (alpha(t_{k+1}) - alpha(t_k)) /
(1 - alpha(t_k)), and its final fill (stage N) reveals every remaining mask (r_N = 1). The
forward chain whose reverse has exactly these steps keeps a token after stage k with
probability beta_k = (alpha(t_k) - alpha(t_0)) / (1 - alpha(t_0)): beta_0 = 0 matches the
all-MASK start, so there is no prior term, and its own reveal probabilities are the r_k.
The bound is sum_k E_{x_{t_k} ~ q}[KL(q(x_{t_{k+1}} | x_{t_k}, x0) || p(x_{t_{k+1}} | x_{t_k}))]
over stages k = 0..N (stage N ends at x0). For a factorised step the KL is
r_k * sum over masked i of -log p(x0^i | x_{t_k}); a uniform model then telescopes to L log V.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MaskChain:
  """Per-stage arrays [N + 1] of the forward chain matched to an N-step sampler."""

  times: jax.Array  # t_k, the network's time input at stage k
  keep: jax.Array  # beta_k: P(a token is unmasked in x_{t_k})
  reveal: jax.Array  # r_k: P(a masked position is revealed at stage k); r_N = 1


def mask_chain(schedule, times):
  """The chain on `times` [N + 1] (t_0 = 1 first) under a masking `schedule`."""
  alpha = schedule.alpha(times)
  keep = (alpha - alpha[0]) / (1.0 - alpha[0])
  reveal = jnp.concatenate([(alpha[1:] - alpha[:-1]) / (1.0 - alpha[:-1]), jnp.ones((1,), alpha.dtype)])
  return MaskChain(times=times, keep=keep, reveal=reveal)


def chain_state(key, x0, chain, k, mask_id):
  """x_{t_k} ~ q: each token kept with probability beta_k, else MASK."""
  keep = jax.random.uniform(key, x0.shape, dtype=jnp.float32) < chain.keep[k]
  return jnp.where(keep, x0, mask_id)


def revealed(key, x_t, chain, k, mask_id):
  """bool [B, L]: the masked positions the forward posterior reveals at stage k (all at k = N)."""
  return (x_t == mask_id) & (jax.random.uniform(key, x_t.shape, dtype=jnp.float32) < chain.reveal[k])


def sum_over_stages(stage_terms, num_stages, key):
  """sum over k = 0..num_stages-1 of stage_terms(k, key_k) (a dict of [B] arrays), each
  stage with its own key (a fresh forward draw), as one loop: the network compiles once."""
  keys = jax.random.split(key, num_stages)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(stage_terms, 0, keys[0]))
  body = lambda k, total: jax.tree.map(jnp.add, total, stage_terms(k, keys[k]))
  return jax.lax.fori_loop(0, num_stages, body, zeros)


def gaussian_step_kl(schedule, t, s, sq_err):
  """KL(q(y_s | y_t, y0) || q(y_s | y_t, y0-hat)) = 1/2 (SNR(s) - SNR(t)) ||y0 - y0-hat||^2:
  the ancestral Gaussian step (same variance, means differ by alpha_s var_ts / var_t (y0 - y0-hat))."""
  return 0.5 * (schedule.snr(s) - schedule.snr(t)) * sq_err


def gaussian_decoder_nll(schedule, t, sq_err, dims):
  """-log N(y0; y0-hat, I / SNR(t)) per sequence: the latent's last step from y_t to y0,
  with the variance of y_t / alpha_t around y0."""
  variance = 1.0 / schedule.snr(t)
  return 0.5 * dims * jnp.log(2 * jnp.pi * variance) + 0.5 * sq_err / variance
