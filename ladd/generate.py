"""Drawing samples from a built job, shared by `ladd.sample` and `ladd.evaluate` (a module
without absl flags, so both entry points can import it)."""

import jax
import numpy as np
from flax import nnx


def make_sampler(graphdef, method, settings, batch_size):
  """jit of (params, model_state, key) -> (tokens [batch_size, L], info)."""
  @jax.jit
  def draw(params, model_state, key):
    return method.sample(nnx.merge(graphdef, params, model_state), key, batch_size, settings)
  return draw


def sample(job, params, model_state, settings, num_samples, batch_size, seed):
  """Returns (tokens [num_samples, L] numpy, mean NFE per batch)."""
  draw = make_sampler(job.trainer.graphdef, job.method, settings, batch_size)
  chunks, nfes = [], []
  with jax.set_mesh(job.mesh):
    for i in range(-(-num_samples // batch_size)):
      tokens, info = draw(params, model_state, jax.random.fold_in(jax.random.key(seed), i))
      chunks.append(np.asarray(jax.device_get(tokens)))
      nfes.append(int(info["nfe"]))
  return np.concatenate(chunks)[:num_samples], float(np.mean(nfes))
