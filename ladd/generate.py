"""Drawing samples from a built job, shared by `ladd.sample` and `ladd.evaluate` (a module
without absl flags, so both entry points can import it)."""

import jax
import numpy as np
from flax import nnx

from ladd.metrics import progress


def sample(job, params, model_state, settings, num_samples, batch_size, seed):
  """Returns (tokens [num_samples, L] numpy, mean NFE per batch)."""
  graphdef, method = job.trainer.graphdef, job.method

  @jax.jit
  def draw(params, model_state, key):
    return method.sample(nnx.merge(graphdef, params, model_state), key, batch_size, settings)

  chunks, nfes = [], []
  with jax.set_mesh(job.mesh):
    num_batches = -(-num_samples // batch_size)
    for i in progress(range(num_batches), num_batches, "sampling batches"):
      tokens, info = draw(params, model_state, jax.random.fold_in(jax.random.key(seed), i))
      chunks.append(np.asarray(jax.device_get(tokens)))
      nfes.append(int(info["nfe"]))
  return np.concatenate(chunks)[:num_samples], float(np.mean(nfes))
