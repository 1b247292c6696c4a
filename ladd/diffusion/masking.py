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
  """Continuous-time NELBO in nats per sequence: w(t) * sum over masked positions."""
  return schedule.nelbo_weight(t) * token_nll.sum(axis=-1)
