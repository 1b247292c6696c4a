"""Small shared builders for the tests."""

import jax
import numpy as np

from configs import binsaw


def tiny_config(**mesh):
  """binsaw:tiny with sizes that every test mesh (up to 4-way fsdp x 2-way tensor) divides."""
  c = binsaw.get_config("tiny")
  c.model.update(d_model=64, n_heads=4, cond_dim=16)
  c.train.update(log_every=1)
  c.mesh.update(data=mesh.get("data", -1), fsdp=mesh.get("fsdp", 1), tensor=mesh.get("tensor", 1))
  return c


def host_tree(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
