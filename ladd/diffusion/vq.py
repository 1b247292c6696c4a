"""Vector quantisation with an EMA codebook (Di-LADD, method.md §2.2; VQ-VAE-2 style).

Pure functions of arrays; the module holding the EMA statistics is in ladd.models.latent.
Shapes: z_e [..., D], codebook [K, D], ids int32 [...].
"""

import jax
import jax.numpy as jnp


def nearest_code(z_e, codebook):
  """(ids, z_q): the codebook row closest in squared distance to each vector."""
  z = z_e.astype(jnp.float32)
  dist = (jnp.sum(z * z, -1, keepdims=True) - 2 * z @ codebook.T
          + jnp.sum(codebook * codebook, -1))
  ids = jnp.argmin(dist, -1).astype(jnp.int32)
  return ids, codebook[ids]


def straight_through(z_e, z_q):
  """Forward value z_q, gradient of the identity into z_e."""
  return z_e + jax.lax.stop_gradient(z_q - z_e)


def commitment_loss(z_e, z_q, beta):
  """beta ||z_e - sg(z_q)||^2, mean over vectors (summed over D)."""
  diff = z_e.astype(jnp.float32) - jax.lax.stop_gradient(z_q)
  return beta * jnp.mean(jnp.sum(diff * diff, -1))


def ema_update(counts, sums, z_e, ids, decay):
  """New (counts [K], sums [K, D]) after one batch; the codebook is sums / counts."""
  one_hot = jax.nn.one_hot(ids.reshape(-1), counts.shape[0], dtype=jnp.float32)
  z = jax.lax.stop_gradient(z_e).reshape(-1, z_e.shape[-1]).astype(jnp.float32)
  counts = decay * counts + (1 - decay) * one_hot.sum(0)
  sums = decay * sums + (1 - decay) * one_hot.T @ z
  return counts, sums


def restart_dead_codes(counts, sums, z_e, threshold=0.01):
  """Codes whose EMA count fell below `threshold` x the mean count restart at a batch vector
  (code k takes vector k mod N): without this, codes never chosen at initialisation
  stay dead and the latent carries log(used codes) nats at most."""
  z = jax.lax.stop_gradient(z_e).reshape(-1, z_e.shape[-1]).astype(jnp.float32)
  dead = counts < threshold * counts.mean()
  replacement = z[jnp.arange(counts.shape[0]) % z.shape[0]]
  mean_count = counts.mean()
  return (jnp.where(dead, mean_count, counts),
          jnp.where(dead[:, None], replacement * mean_count, sums))


def codebook_from_ema(counts, sums, smoothing=1e-5):
  """Laplace-smoothed cluster means, so rarely used codes do not divide by zero."""
  n = counts.sum()
  smoothed = (counts + smoothing) / (n + counts.shape[0] * smoothing) * n
  return sums / smoothed[:, None]


def usage_metrics(ids, codebook_size):
  """Perplexity exp(H(code histogram)) and the fraction of codes used in the batch."""
  hist = jax.nn.one_hot(ids.reshape(-1), codebook_size, dtype=jnp.float32).mean(0)
  entropy = -jnp.sum(jnp.where(hist > 0, hist * jnp.log(jnp.maximum(hist, 1e-30)), 0.0))
  return {"code_perplexity": jnp.exp(entropy), "code_usage": jnp.mean(hist > 0)}
