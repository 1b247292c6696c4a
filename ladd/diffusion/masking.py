"""Forward masking, SUBS parameterisation and the continuous-time NELBO (method.md §1).

Shapes: x0, x_t int32 [B, L]; logits float [B, L, Vp] where Vp >= V + 1 (the vocabulary
padded for sharding); MASK is id V; ids >= V are never predicted.
"""

import jax
import jax.numpy as jnp

NEG_INF = -1e6  # finite, so that 0 * NEG_INF stays 0 in expectations


def stratified_times(key, batch_size, eps):
  """t_b = ((u + b/B) mod 1)(1 - eps) + eps with one shared u: low-variance t coverage."""
  u = jax.random.uniform(key, (), dtype=jnp.float32)
  t = jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
  return t * (1.0 - eps) + eps


def mask_tokens(key, x0, alpha_t, mask_id, maskable=None):
  """Keeps each token independently with probability alpha_t [B], else writes MASK.

  `maskable` (bool [B, L], optional) marks the positions that may be masked; the rest
  (padding) always stay clean, so they are never predicted nor counted in a NELBO.
  """
  keep = jax.random.uniform(key, x0.shape, dtype=jnp.float32) < alpha_t[:, None]
  if maskable is not None:
    keep = keep | ~maskable
  return jnp.where(keep, x0, mask_id)


def subs_log_probs(logits, x_t, vocab_size, mask_id):
  """SUBS: no probability on MASK/padding ids, and carry-over at unmasked positions.

  Returns float32 log-probabilities; at an unmasked position all mass is on x_t.
  """
  logits = logits.astype(jnp.float32)
  valid = jnp.arange(logits.shape[-1]) < vocab_size
  log_probs = jax.nn.log_softmax(jnp.where(valid, logits, NEG_INF), axis=-1)
  observed = jax.nn.one_hot(x_t, logits.shape[-1], dtype=jnp.bool_)
  carry_over = jnp.where(observed, 0.0, NEG_INF)
  return jnp.where((x_t == mask_id)[..., None], log_probs, carry_over)


def token_nll(logits, x0, vocab_size):
  """-log softmax(logits)[x0] over the real ids < vocab_size at every position; float32 [B, L].

  Uses logsumexp minus the target logit rather than a full log-softmax, so no second
  [B, L, Vp] array is materialised on the training path.
  """
  logits = logits.astype(jnp.float32)
  valid = jnp.arange(logits.shape[-1]) < vocab_size
  logits = jnp.where(valid, logits, NEG_INF)
  target = jnp.take_along_axis(logits, x0[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - target


def masked_token_nll(logits, x0, x_t, vocab_size, mask_id):
  """-log p(x0^i | x_t) at masked positions, 0 elsewhere; float32 [B, L]."""
  return jnp.where(x_t == mask_id, token_nll(logits, x0, vocab_size), 0.0)


def nelbo_per_sequence(token_nll, t, schedule):
  """The training NELBO in nats per sequence: w(t) * sum over masked positions (alpha(t)
  masking, no end terms: (1 - 2 eps) L log V for a uniform model, so not a bound)."""
  return schedule.nelbo_weight(t) * token_nll.sum(axis=-1)


# The reported bound. The sampler starts from all-MASK at t = 1 and fills what is still
# masked at t = eps in one final step. The forward process consistent with it keeps each
# token with probability beta(t) = (alpha(t) - alpha(1)) / (1 - alpha(1)), so beta(1) = 0
# (all-MASK is exact: no prior term); its reveal rate -beta' / (1 - beta) is w(t). Then
#   -log p(x0) <= int_eps^1 w(t) E_{x_t ~ beta(t)}[sum_masked -log p(x0^i | x_t)] dt
#                 + E_{x_eps ~ beta(eps)}[sum_masked -log p(x0^i | x_eps)]   (the final fill)
# and a uniform model scores exactly L log V (the integral of -beta' is beta(eps)).


def keep_probability(schedule, t):
  """beta(t) = (alpha(t) - alpha(1)) / (1 - alpha(1)): the bound's forward process."""
  alpha_one = schedule.alpha(1.0)
  return (schedule.alpha(t) - alpha_one) / (1.0 - alpha_one)


def diffusion_term(token_nll, t, schedule, dt_du=1.0):
  """(1 - eps) w(t) dt/du * sum over masked positions: the MC estimate of the bound's
  integral with u ~ U[eps, 1] and t = t(u) (dt/du = 1 unless a time change is applied)."""
  return (1.0 - schedule.eps) * schedule.nelbo_weight(t) * dt_du * token_nll.sum(axis=-1)


def log_uniform_times(key, batch_size, eps):
  """t = eps^(1 - v) with v stratified on [0, 1), and the importance weight
  (dt/dv) / (1 - eps) by which a diffusion_term at this t becomes an unbiased estimate of the
  same integral: a Gaussian latent's integrand grows like 1/t near 0 (variance ~ 1/eps under
  uniform t); log-uniform t keeps it bounded."""
  v = stratified_times(key, batch_size, 0.0)
  t = eps ** (1.0 - v)
  return t, t * (-jnp.log(eps)) / (1.0 - eps)


def fill_term(token_nll):
  """The final fill: sum of -log p(x0^i | x_eps) over the positions still masked at eps."""
  return token_nll.sum(axis=-1)


def masked_diffusion_bound(token_nll_fn, key, x0, schedule, mask_id):
  """The bound's two terms per sequence [B] for a denoiser without further latents:
  token_nll_fn(x_t, t [B]) -> -log p(x0^i | x_t) at masked positions, 0 elsewhere."""
  t_key, mask_key, fill_key = jax.random.split(key, 3)
  t = stratified_times(t_key, x0.shape[0], schedule.eps)
  x_t = mask_tokens(mask_key, x0, keep_probability(schedule, t), mask_id)
  t_fill = jnp.full((x0.shape[0],), schedule.eps, jnp.float32)
  x_fill = mask_tokens(fill_key, x0, keep_probability(schedule, t_fill), mask_id)
  return diffusion_term(token_nll_fn(x_t, t), t, schedule), fill_term(token_nll_fn(x_fill, t_fill))
