"""Sharded training equals single-device training; FSDP shards; resume is exact;
a fresh model's NELBO is L log V; a short binsaw run learns."""

import functools
import glob
import json
import os
import shutil

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from ladd import sharding, summary
from ladd.job import build_job
from ladd.methods import build_method
from ladd.train_loop import train
from ladd.trainer import build_trainer, evaluate_nelbo
from tests.helpers import NETWORKS, host_tree, method_config, one_device_job, tiny_config

LARGE = 2**12  # parameters at least this big must be fsdp-sharded


def mesh_for(config):
  devices = jax.devices()[: config.mesh.data * config.mesh.fsdp * config.mesh.tensor]
  return sharding.make_mesh(config.mesh, devices)


def run_steps(mesh_shape, network="mdlm", num_steps=2, microbatches=1, wrap=lambda method: method):
  data, fsdp, tensor = mesh_shape
  config = method_config(network, data=data, fsdp=fsdp, tensor=tensor)
  config.train.microbatches = microbatches
  mesh = mesh_for(config)
  trainer = build_trainer(config, wrap(build_method(config, 2)), mesh)
  state = trainer.init()
  batches = np.random.default_rng(0).integers(0, 2, (num_steps, 8, 32), dtype=np.int32)
  losses = []
  for batch in batches:
    state, metrics = trainer.train_step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return losses, state, trainer


# MDLM on the pure data-parallel and the fsdp x tensor meshes; every other network on the
# mesh that uses all three axes (about 35 s of CPU each). VADD's denoiser is MDLM's DiT
# (VariationalDenoiser wraps it), so vadd on 2x2x2 runs that network on the full mesh too,
# and test_micro_batched_step_equals_the_whole_batch_step runs MDLM's step there. co_seq
# runs every Co-LADD network (encoder, MM-DiT, g_psi), co_joint a subset; di_joint the
# codebook; VMD's networks are VADD's (LatentVariableDiffusion.init_model).
CASES = [("mdlm", (8, 1, 1)), ("mdlm", (1, 4, 2))] + [(n, (2, 2, 2)) for n in ("co_seq", "di_joint", "vadd")]


@pytest.fixture(scope="module")
def single_device():
  @functools.cache
  def reference(network):
    losses, state, _ = run_steps((1, 1, 1), network)
    return losses, host_tree(state["params"]), host_tree(state["model_state"])
  return reference


def assert_laid_out_as_compiled(tree, shardings):
  """Arrays carry the trainer's shardings (test_fsdp_shards_every_large_parameter_of_every_method
  checks those), and an fsdp-sharded one really holds a fraction per device."""
  for (path, leaf), expected in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings), strict=True):
    assert leaf.sharding.spec == expected.spec, f"{jax.tree_util.keystr(path)}: {leaf.sharding.spec} != {expected.spec}"
    if "fsdp" in str(expected.spec):
      assert leaf.addressable_shards[0].data.size < leaf.size


@pytest.mark.parametrize("network, mesh_shape", CASES, ids=lambda c: c if isinstance(c, str) else "x".join(map(str, c)))
def test_sharded_step_matches_single_device(single_device, network, mesh_shape):
  ref_losses, ref_params, ref_model_state = single_device(network)
  losses, state, trainer = run_steps(mesh_shape, network)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  # Step 1 moves a parameter by up to lr / warmup = 1e-5; one whose gradient is at rounding
  # level moves by lr g / (|g| + eps_adam), which differs between reduction orders by ~1e-6
  # (seen on Di-LADD: 1.2e-6).
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-6)
  jax.tree.map(close, host_tree(state["params"]), ref_params)
  jax.tree.map(close, host_tree(state["model_state"]), ref_model_state)  # codebook, encoder statistics
  assert_laid_out_as_compiled(state["params"], trainer.state_shardings["params"])
  assert_laid_out_as_compiled(optax.tree_utils.tree_get(state["opt_state"], "mu"),
                              optax.tree_utils.tree_get(trainer.state_shardings["opt_state"], "mu"))


# (choice) The LADD latent input's first layer, d x 4h, has no model-width axis for fsdp to
# split (its 4h axis is tensor-parallel): linear in the width, it stays replicated over fsdp.
REPLICATED_OVER_FSDP = {("latent", "mlp")}


@pytest.mark.parametrize("network", NETWORKS)
def test_fsdp_shards_every_large_parameter_of_every_method(network):
  """The shardings the trainer compiles with (no step is run): under 4-way fsdp every
  parameter of at least LARGE entries, its EMA and its Adam moments are split over fsdp."""
  config = method_config(network, data=1, fsdp=4, tensor=2)
  method = build_method(config, 2)
  trainer = build_trainer(config, method, mesh_for(config))
  with nnx.use_eager_sharding(False):
    _, params, _ = nnx.split(nnx.eval_shape(lambda: method.init_model(nnx.Rngs(0))), nnx.Param, ...)
  logical = jax.tree.leaves(nnx.get_partition_spec(params), is_leaf=lambda x: isinstance(x, P))
  shardings = trainer.state_shardings
  parts = (shardings["params"], shardings["ema"], optax.tree_utils.tree_get(shardings["opt_state"], "mu"))
  abstract = jax.tree_util.tree_leaves_with_path(trainer.abstract_state["params"])
  checked = 0
  for (path, leaf), names, *sharded in zip(abstract, logical, *map(jax.tree.leaves, parts), strict=True):
    assert len(names) == leaf.ndim, jax.tree_util.keystr(path)  # the trees line up
    if leaf.size >= LARGE and tuple(names) not in REPLICATED_OVER_FSDP:
      checked += 1
      for s in sharded:
        assert "fsdp" in str(s.spec), f"{jax.tree_util.keystr(path)} ({tuple(names)}) is not fsdp-sharded: {s.spec}"
  assert checked >= 4


class MeanOverRowGroups:
  """The wrapped method with a batch's loss and metrics the mean over k row groups (rows
  i, i + k, ...) drawn with keys fold_in(key, i): a plain step of this is what a step in
  k micro-batches must equal."""

  def __init__(self, method, k):
    self.method, self.k = method, k

  def __getattr__(self, name):
    return getattr(self.method, name)

  def loss(self, model, x0, key, step):
    losses, metrics = zip(*(self.method.loss(model, x0[i::self.k], jax.random.fold_in(key, i), step) for i in range(self.k)))
    return sum(losses) / self.k, jax.tree.map(lambda *m: sum(m) / self.k, *metrics)


def test_micro_batched_step_equals_the_whole_batch_step():
  losses, state, _ = run_steps((2, 2, 2), microbatches=2)
  ref_losses, ref_state, _ = run_steps((2, 2, 2), wrap=lambda method: MeanOverRowGroups(method, 2))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               host_tree(state["params"]), host_tree(ref_state["params"]))


def test_impossible_micro_batches_are_rejected():
  config = tiny_config(data=8)
  config.train.microbatches = 2  # micro-batches of 4 rows cannot fill 8 devices
  from ladd.job import validate
  with pytest.raises(ValueError, match="train.microbatches=2"):
    validate(config, sharding.make_mesh(config.mesh))


def test_impossible_mesh_is_rejected():
  with pytest.raises(ValueError, match="cannot fill 8 devices"):
    sharding.resolve_mesh_shape((3, -1, 1), 8)
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.resolve_mesh_shape((3, 2, 1), 8)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.resolve_mesh_shape((-1, -1, 1), 8)


def read_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_resume_is_exact_even_after_an_interrupted_save(tmp_path):
  config = tiny_config()
  config.train.update(steps=6, checkpoint_every=3, eval_every=100)
  straight = train(config, str(tmp_path / "straight"))

  resumed_dir = str(tmp_path / "resumed")
  first_half = tiny_config()
  first_half.train.update(steps=3, checkpoint_every=3, eval_every=100)
  train(first_half, resumed_dir)
  ckpt = os.path.join(resumed_dir, "checkpoints")
  # A save of step 5 that never finished: orbax leaves a tmp directory behind.
  shutil.copytree(os.path.join(ckpt, "3"), os.path.join(ckpt, "5.orbax-checkpoint-tmp-1234567"))
  resumed = train(config, resumed_dir)

  assert not any("tmp" in name for name in os.listdir(ckpt))
  jax.tree.map(np.testing.assert_array_equal, host_tree(resumed["params"]), host_tree(straight["params"]))
  jax.tree.map(np.testing.assert_array_equal, host_tree(resumed["ema"]), host_tree(straight["ema"]))
  assert read_losses(resumed_dir) == read_losses(str(tmp_path / "straight"))


def test_profile_window_writes_a_trace_and_the_log_splits_step_time(tmp_path, capsys):
  config = tiny_config()
  config.train.update(steps=3, log_every=3, checkpoint_every=3, eval_every=100, profile_steps=(1, 5))
  train(config, str(tmp_path))
  traces = glob.glob(str(tmp_path / "profile" / "**" / "*.xplane.pb"), recursive=True)
  assert traces and os.path.getsize(traces[0]) > 0
  assert "profile of steps 2-3 written to" in capsys.readouterr().out  # the window stops at train.steps
  with open(tmp_path / "metrics.jsonl") as f:
    [record] = [json.loads(line) for line in f]
  assert 0 <= record["data_wait_s"] < record["step_time_s"]


def test_fresh_model_perplexity_is_vocabulary_size(tmp_path):
  """A zero-initialised head predicts uniformly, so NELBO = L log V (method.md §1)."""
  config = tiny_config()
  config.data.update(source="shakespeare", tokenizer="char", eval_batch_size=512)
  job = build_job(config, str(tmp_path))
  state = job.trainer.init()
  batches = job.dataset.eval_batches(0, 1, 512, 16)
  totals = evaluate_nelbo(job.trainer, state["params"], state["model_state"], batches, seed=0)
  # Per-sequence NELBO has relative s.d. ~sqrt(log(1/eps) / L); over 8192 sequences
  # that is 0.33%, so 1.2% is a 3.5-sigma band on log-perplexity.
  assert totals["sequences"] == 8192
  assert totals["nelbo"] / totals["tokens"] == pytest.approx(np.log(job.dataset.vocab_size), rel=0.012)
  # the reported standard error describes that spread: the estimate is within 4 of them
  reported = summary.summarize(totals, job.method.quantities)
  stderr = reported["nelbo_per_token_stderr"]
  assert 0 < stderr < 0.01 * np.log(job.dataset.vocab_size)
  assert abs(reported["nelbo_per_token"] - np.log(job.dataset.vocab_size)) < 4 * stderr


def test_short_binsaw_run_sits_between_entropy_and_independent_bits():
  """method.md §5: the exact entropy (~67.9 nats) is a floor for any NELBO, and an
  independent-bits model scores 128 ln 2 ~ 88.7; a short run must land clearly between.

  The trainer's step on one device, without the loop's checkpoints and logs: learning is
  what this checks (the loop and the sharded step are the other tests' subject). A
  one-layer d_model 32 model reaches 72.4 nats in 60 steps here (75.4 after 40): 4 above
  the floor and 9 below the 81.6 line."""
  from configs import binsaw
  config = binsaw.get_config()
  config.model.update(d_model=32, n_layers=1, n_heads=2, cond_dim=16)
  config.data.update(batch_size=32, eval_batch_size=128)
  config.optim.update(lr=3e-3, warmup_steps=30, ema_decay=0.9)
  config.train.update(steps=60)
  job = one_device_job(config)
  state = job.trainer.init()
  data_iter = job.dataset.train_iterator(0, 1, config.data.batch_size)
  for _ in range(config.train.steps):
    state, _ = job.trainer.train_step(state, sharding.global_batch(next(data_iter), job.mesh))
  batches = job.dataset.eval_batches(0, 1, 128, 8)
  totals = evaluate_nelbo(job.trainer, state["ema"], state["model_state"], batches, seed=0)
  nelbo = totals["nelbo"] / totals["sequences"]
  entropy = job.dataset.exact.entropy()
  assert entropy == pytest.approx(67.9, abs=0.3)
  assert entropy < nelbo < 0.92 * 128 * np.log(2), (nelbo, entropy)
