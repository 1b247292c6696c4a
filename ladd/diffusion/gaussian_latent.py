"""Diagonal-Gaussian latent variables: reparameterisation, log-densities, KL and KL annealing.

Pure functions shared by the variational methods (VADD, VMD: method.md §3-4) and usable by
any method with a Gaussian encoder. Means and log-variances are [..., d]; every reduction
sums over the last axis only, so results are per example.
"""

import math

import jax
import jax.numpy as jnp


def reparameterize(key, mean, log_var):
  """z = mean + exp(log_var / 2) * noise: differentiable in mean and log_var."""
  noise = jax.random.normal(key, mean.shape, jnp.float32)
  return mean + jnp.exp(0.5 * log_var) * noise


def diagonal_gaussian_log_prob(z, mean, log_var):
  """log N(z; mean, diag(exp(log_var))), summed over the last axis."""
  return -0.5 * jnp.sum(math.log(2 * math.pi) + log_var + jnp.square(z - mean) * jnp.exp(-log_var), -1)


def standard_normal_log_prob(z):
  return diagonal_gaussian_log_prob(z, jnp.zeros_like(z), jnp.zeros_like(z))


def diagonal_gaussian_kl(mean_q, log_var_q, mean_p, log_var_p):
  """KL(N(mean_q, var_q) || N(mean_p, var_p)) per dimension (no reduction), in nats."""
  return 0.5 * (log_var_p - log_var_q + (jnp.exp(log_var_q) + jnp.square(mean_q - mean_p)) * jnp.exp(-log_var_p) - 1.0)


def kl_to_standard_normal(mean, log_var):
  """KL(N(mean, diag(exp(log_var))) || N(0, I)) per dimension: the VAE prior term."""
  zeros = jnp.zeros_like(mean)
  return diagonal_gaussian_kl(mean, log_var, zeros, zeros)


def kl_anneal_weight(step, anneal_steps):
  """lambda(step): rises linearly from 0 at step 0 to 1 at `anneal_steps` (0 = always 1)."""
  if anneal_steps <= 0:
    return jnp.float32(1.0)
  return jnp.minimum(jnp.asarray(step, jnp.float32) / anneal_steps, 1.0)
