"""Small shared builders for the tests."""

import os
import sys

import jax
import numpy as np

from configs import binsaw
from configs.ladd_binsaw import apply_ladd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def subprocess_env(devices):
  """Environment for an entry point run as a child process with `devices` CPU devices."""
  return dict(os.environ, PYTHONPATH=ROOT,
              XLA_FLAGS=f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}")


def entry_point(module, *args):
  return [sys.executable, "-m", module, *args]


def tiny_config(**mesh):
  """binsaw:tiny with sizes that every test mesh (up to 4-way fsdp x 2-way tensor) divides."""
  c = binsaw.get_config("tiny")
  c.model.update(d_model=64, n_heads=4, cond_dim=16)
  c.train.update(log_every=1)
  c.mesh.update(data=mesh.get("data", -1), fsdp=mesh.get("fsdp", 1), tensor=mesh.get("tensor", 1))
  return c


# Every method's networks, tiny: MDLM's DiT, Co-LADD (joint; sequential adds g_psi), Di-LADD
# (EMA codebook), VADD and VMD (recognition model).
NETWORKS = ("mdlm", "co_joint", "co_seq", "di_joint", "vadd", "vmd")


def method_config(network, **mesh):
  """tiny_config(**mesh) running `network` (one of NETWORKS)."""
  c = tiny_config(**mesh)
  if network.startswith(("co_", "di_")):
    return apply_ladd(c, network + "_tiny", "binsaw")
  c.method = network
  return c


def host_tree(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
