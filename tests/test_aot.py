"""Ahead-of-time compilation for TPU slices (ladd.aot, python -m ladd.compile) and the
FLOP count that MFU uses."""

import math
import subprocess

import jax
import jax.numpy as jnp
import pytest

from ladd import aot, sharding
from ladd.methods import build_method
from ladd.trainer import build_trainer
from tests.helpers import ROOT, entry_point, subprocess_env, tiny_config


def test_flop_count_multiplies_loop_bodies():
  weights, x = jnp.zeros((5, 16, 24)), jnp.zeros((8, 16))

  def scanned(weights, x):
    return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w[:, :16]), None), x, weights)[0]

  def unrolled(weights, x):
    for w in weights:
      x = jnp.tanh(x @ w[:, :16])
    return x

  expected = 5 * 2 * 8 * 16 * 16
  assert aot.count_flops(jax.make_jaxpr(scanned)(weights, x)) == expected
  assert aot.count_flops(jax.make_jaxpr(unrolled)(weights, x)) == expected
  # XLA's compiled cost analysis counts the scan body once: why ladd counts from the program
  compiled = jax.jit(scanned).lower(weights, x).compile().cost_analysis()
  assert compiled["flops"] < expected / 2


def step_flops(**overrides):
  config = tiny_config(data=2, fsdp=2, tensor=2)
  config.model.update(n_layers=2)
  for key, value in overrides.items():
    section, name = key.split("__")
    config[section][name] = value
  mesh = sharding.make_mesh(config.mesh)
  method = build_method(config, 2)
  return aot.train_step_flops(build_trainer(config, method, mesh), config), method, config, mesh


def test_train_step_flops_are_the_same_work_however_the_step_is_looped():
  plain, method, config, _ = step_flops()
  assert step_flops(model__scan_layers=True)[0] == plain
  assert step_flops(train__microbatches=2)[0] == plain
  executed, _, remat_config, mesh = step_flops(model__remat="full")
  assert executed > plain  # recomputation is executed ...
  assert aot.model_flops_per_step(remat_config, 2, mesh) == plain  # ... but is not model work
  # The hand-written 6 N + attention formula covers the per-token matmuls; the count adds the
  # per-sequence adaLN and time-embedding ones (a few percent at this size).
  tokens_per_device = config.data.batch_size * config.data.seq_len / 8
  assert 1.0 < plain / (method.flops_per_token * tokens_per_device) < 1.25


def test_memory_advice_names_the_shortfall_and_the_knobs():
  config = tiny_config(data=2, fsdp=4)
  activations = aot.CompiledReport("train step", 1.0, 1.0, argument_bytes=2 * aot.GIB, output_bytes=2 * aot.GIB,
                                   alias_bytes=2 * aot.GIB, temp_bytes=20 * aot.GIB, xla_flops=0.0)
  line = aot.advice(config, activations, 16 * aot.GIB)
  assert "22.00 GiB per chip is 6.00 GiB over the 16 GiB HBM" in line
  assert "model.remat=dots_saveable" in line and "train.microbatches=2" in line
  weights = aot.CompiledReport("train step", 1.0, 1.0, argument_bytes=30 * aot.GIB, output_bytes=0,
                               alias_bytes=0, temp_bytes=1 * aot.GIB, xla_flops=0.0)
  assert "mesh.fsdp=-1" in aot.advice(config, weights, 16 * aot.GIB)
  # XLA:TPU refuses to compile a program larger than HBM (message from a 64 x 8192 batch on v5e:2x2)
  message = ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out of memory in "
             "memory space hbm. Used 24.06G of 15.75G hbm. Exceeded hbm capacity by 8.31G.\n\nTotal hbm usage >= 24.31G")
  refused = aot.CompiledReport("train step", 1.0, 1.0, 0, 0, 0, 0, 0.0, out_of_memory=aot.out_of_memory_summary(message))
  line = aot.advice(config, refused, 16 * aot.GIB)
  assert "does not fit: XLA: Used 24.06G of 15.75G hbm. Exceeded hbm capacity by 8.31G.; try" in line
  assert "mesh.fsdp=-1" in line and "train.microbatches=2" in line


def test_libtpu_gets_large_compiler_stacks_unless_told_otherwise():
  # test_train_step_compiles_for_a_tpu_slice_with_per_chip_memory compiles with these flags:
  # libtpu rejects a flag it does not know, so that test also shows it accepts them
  assert aot.libtpu_init_args("") == ("--fibers_default_thread_stack_size=67108864"
                                      " --xla_internal_thread_stack_size_bytes=67108864")
  mine = aot.libtpu_init_args("--xla_tpu_foo=1 --fibers_default_thread_stack_size=1048576")
  assert mine == "--xla_tpu_foo=1 --fibers_default_thread_stack_size=1048576 --xla_internal_thread_stack_size_bytes=67108864"


def test_bad_topology_is_one_clear_line():
  result = subprocess.run(entry_point("ladd.compile", "--config=configs/shakespeare.py:tiny", "--topology=v5p-256"),
                          cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "ladd.compile: error: --topology='v5p-256' is not a TPU slice name; use GENERATION:AxB[xC] with GENERATION "
      "one of ['v4', 'v5e', 'v5p', 'v6e'], e.g. v5p:4x4x8 (128 chips), v6e:16x16 (256 chips), v5e:2x2"]


def test_train_step_compiles_for_a_tpu_slice_with_per_chip_memory():
  pytest.importorskip("libtpu", reason="compiling for TPU needs libtpu: pip install -c constraints.txt -e '.[dev]'")
  slice_ = aot.tpu_slice("v5e:2x2")
  assert len(slice_.devices) == 4 and slice_.hbm_per_device == 16 * aot.GIB
  config = tiny_config(data=1, fsdp=-1)
  mesh, n_params, flops, reports = aot.compile_for_slice(config, slice_.devices, with_sampler=False)
  assert sharding.describe(mesh) == "data=1 x fsdp=4 x tensor=1"
  [train] = reports
  # The arguments are each device's shards of the train state and the batch, padded to TPU tiles
  # (small arrays pad the most).
  trainer = build_trainer(config, build_method(config, 2), mesh)
  state, batch = aot.abstract_train_args(trainer, config)
  shard_bytes = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves((state, batch)))
  assert shard_bytes <= train.argument_bytes < 2 * shard_bytes
  assert train.alias_bytes > 0  # the donated state is updated in place
  assert 0 < train.xla_flops and 0 < flops["model"] == flops["executed"] and n_params > 0
  lines, misses = aot.format_report(slice_, config, mesh, n_params, flops, reports)
  assert not misses and any(line.startswith("train step: compiled in") for line in lines)


def test_tpu_vm_commands_name_the_slice_and_launch_every_host():
  from tools import tpu_commands
  assert tpu_commands.parse_accelerator("v5p-256") == ("v5p", 128, "4x4x8")  # v5p counts 2 cores per chip
  assert tpu_commands.parse_accelerator("v6e-256") == ("v6e", 256, "16x16")
  assert tpu_commands.parse_accelerator("v5e-4") == ("v5litepod", 4, "2x2")
  lines = tpu_commands.commands(tpu_commands.argparse.Namespace(
      accelerator="v5p-256", config="configs/openwebtext_pod.py:1b", name="n", zone="z", bucket="b",
      shared_dir="/mnt/s", run="r", override=["--config.train.microbatches=2"]))
  assert "python -m ladd.compile --config=configs/openwebtext_pod.py:1b --topology=v5p:4x4x8 --config.train.microbatches=2" in lines
  [launch] = [line for line in lines if "ladd.train" in line]
  assert "--worker=all" in launch and "--distributed" in launch and "--workdir=/mnt/s/runs/r" in launch
  in_bucket = tpu_commands.commands(tpu_commands.argparse.Namespace(
      accelerator="v6e-256", config="c.py", name="n", zone="us-east5-b", bucket="b", shared_dir="", run="r", override=[]))
  [launch] = [line for line in in_bucket if "ladd.train" in line]
  assert "--workdir=gs://b/runs/r" in launch and not any("gcsfuse" in line for line in in_bucket)
  assert "gcloud storage buckets create gs://b --location=us-east5" in in_bucket
  with pytest.raises(ValueError, match="accelerator type"):
    tpu_commands.parse_accelerator("v5p:4x4x8")
