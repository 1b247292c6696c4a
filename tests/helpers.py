"""Small shared builders for the tests."""

import hashlib
import os
import sys

import jax
import numpy as np

from configs import binsaw
from configs import toys as toy_configs
from configs.ladd_binsaw import apply_ladd
from ladd import sharding
from ladd.data import build_dataset, toys
from ladd.diffusion.sampling import SamplerSettings
from ladd.generate import sample
from ladd.job import Job
from ladd.methods import build_method
from ladd.trainer import build_trainer

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


def snapshot(workdir):
  """{relative path: sha256} of every file under workdir: equal snapshots, nothing changed."""
  digest = {}
  for dirpath, _, files in os.walk(workdir):
    for f in files:
      with open(os.path.join(dirpath, f), "rb") as fh:
        digest[os.path.relpath(os.path.join(dirpath, f), workdir)] = hashlib.sha256(fh.read()).hexdigest()
  return digest


def host_tree(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def one_device_job(config):
  """The in-memory job of `config` on one device (the shortest compiles; the sharded
  trainer itself is tested in test_training.py)."""
  config.mesh.update(data=1)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  dataset = build_dataset(config.data, None)
  method = build_method(config, dataset.vocab_size)
  return Job(config, dataset, method, mesh, build_trainer(config, method, mesh))


def position_marginals(tokens, vocab):
  """Per-position symbol frequencies [L, V] of tokens [n, L]."""
  return np.stack([np.bincount(column, minlength=vocab) / len(column) for column in np.asarray(tokens).T])


def one_step_marginals_on_product(method, position_embedding, steps=300, num_samples=4096):
  """Trains `method` briefly on the product toy (independent positions, each with its own
  table) and returns (per-position marginals of its one-step samples, true marginals), [L, V].

  One device and a high learning rate keep it to seconds: on a product every masked
  position's optimal prediction is its own marginal, whatever else is masked, so a model
  that can tell positions apart learns the answer from every batch.
  """
  config = toy_configs.get_config(f"{method},product,tiny")
  config.data.update(batch_size=64)
  config.model.update(position_embedding=position_embedding)
  config.optim.update(lr=1e-2, warmup_steps=10)
  job = one_device_job(config)
  dataset = job.dataset
  state = job.trainer.init()
  _, exact = toys.toy_task(config.data)  # the source's own generator: the pipeline is tested elsewhere
  rng = np.random.default_rng(0)
  for _ in range(steps):
    state, _ = job.trainer.train_step(state, sharding.global_batch(exact.sample(rng, config.data.batch_size), job.mesh))
  tokens, _ = sample(job, state["params"], state["model_state"], SamplerSettings(steps=1), num_samples, num_samples, 0)
  probs = dataset.exact.probs
  truth = np.stack([probs.sum(tuple(a for a in range(probs.ndim) if a != i)) for i in range(probs.ndim)])
  return position_marginals(tokens, dataset.vocab_size), truth


def assert_one_step_marginals_match_the_product(method, position_embedding="learned"):
  """Every position's one-step sample marginal is within TOLERANCE (total variation) of
  its true marginal.

  A position-blind model emits one marginal q at every position, so by the triangle
  inequality it misses some position by at least max_ij TV(p_i, p_j) / 2 (0.34 for the
  product's seed-0 tables). Sampling noise in one
  position's frequencies from n = 4096 draws over V = 4 symbols is at most
  E TV <= sqrt((V - 1) / n) / 2 = 0.014. A tolerance of 0.12 leaves a trained model room
  (0.03-0.06 after 300 steps) and a blind one none: 0.34 - 0.12 is 15 times the noise.
  """
  tolerance = 0.12
  got, truth = one_step_marginals_on_product(method, position_embedding)
  blind_miss = max(np.abs(p - q).sum() / 2 for p in truth for q in truth) / 2
  assert blind_miss - tolerance > 10 * np.sqrt((truth.shape[1] - 1) / 4096) / 2
  per_position_tv = np.abs(got - truth).sum(-1) / 2
  assert per_position_tv.max() < tolerance, (per_position_tv, got, truth)
