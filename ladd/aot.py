"""Ahead-of-time compilation of ladd's train step and sampler for a TPU slice, from any
machine (`python -m ladd.compile`): per-chip memory against the chip's HBM, FLOPs per
step, compile times. Needs libtpu only for TPU topologies (`pip install -e '.[tpu]'`).
"""

import dataclasses
import math
import os
import re
import time

import jax
import jax.numpy as jnp
from jax.extend.core import jaxprs_in_params

from ladd import sharding
from ladd.diffusion.sampling import SamplerSettings
from ladd.generate import compiled_sampler
from ladd.methods import build_method
from ladd.trainer import build_trainer

GIB = 2**30
# HBM per chip; a topology name counts chips (v4 "2x2x1" = 4 chips).
HBM_PER_CHIP = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}
TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
# libtpu probes the VM it runs on unless told; these describe "no TPU here" and keep it quiet.
# Compiling claims no chip, so several compiling processes may load libtpu at once.
QUIET_LIBTPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-4",
                    "TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
# libtpu 0.0.41 gives its compiler threads 72 KiB stacks; emitting the 8b config's matmuls for
# v6e recurses deeper (a segfault in FusionEmitter / TileLatchGroup, ~195 frames), so compiling
# asks for 64 MiB stacks unless LIBTPU_INIT_ARGS sets them.
LIBTPU_STACK_FLAGS = {"--fibers_default_thread_stack_size": "67108864",
                      "--xla_internal_thread_stack_size_bytes": "67108864"}


def libtpu_init_args(given):
  """`given` LIBTPU_INIT_ARGS with the stack flags it does not set itself."""
  missing = [f"{flag}={value}" for flag, value in LIBTPU_STACK_FLAGS.items() if flag not in given]
  return " ".join([given.strip(), *missing]).strip()


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str
  devices: tuple
  hbm_per_device: int


def tpu_slice(name):
  """The devices of a TPU slice named like `v5p:4x4x8`; a ValueError names the fix."""
  match = TOPOLOGY.match(name)
  if not match:
    raise ValueError(f"--topology={name!r} is not a TPU slice name; use GENERATION:AxB[xC] with GENERATION one of "
                     f"{sorted(HBM_PER_CHIP)}, e.g. v5p:4x4x8 (128 chips), v6e:16x16 (256 chips), v5e:2x2")
  for key, value in QUIET_LIBTPU_ENV.items():
    os.environ.setdefault(key, value)
  os.environ["LIBTPU_INIT_ARGS"] = libtpu_init_args(os.environ.get("LIBTPU_INIT_ARGS", ""))
  from jax.experimental import topologies
  try:
    topology = topologies.get_topology_desc(platform="tpu", topology_name=name)
  except RuntimeError as e:
    if "not installed" in str(e):
      raise ValueError("compiling for TPU needs libtpu: pip install -c constraints.txt -e '.[tpu]'") from e
    raise ValueError(f"--topology={name!r}: {str(e).splitlines()[0]}") from e
  chips = math.prod(int(x) for x in match.group(2).split("x"))
  devices = tuple(topology.devices)
  return Slice(name, devices, HBM_PER_CHIP[match.group(1)] * chips // len(devices))


def vocab_size_without_data(config):
  """The vocabulary size a run of `config` will have, without reading its data where the
  config states it (token-id sources, BPE); character data is read to count its symbols."""
  if config.data.vocab_size > 0:
    return config.data.vocab_size
  if config.data.tokenizer == "bpe":
    return config.data.bpe_vocab_size
  from ladd.data import build_dataset
  return build_dataset(config.data, None).vocab_size


def _abstract(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def abstract_train_args(trainer, config):
  """(state, batch) as ShapeDtypeStructs carrying the trainer's shardings."""
  batch = jax.ShapeDtypeStruct((config.data.batch_size, config.data.seq_len), jnp.int32,
                               sharding=sharding.batch_sharding(trainer.mesh))
  return _abstract(trainer.abstract_state, trainer.state_shardings), batch


def count_flops(closed_jaxpr):
  """Matmul FLOPs (2 per multiply-add) of a traced program, loop bodies multiplied by their
  trip counts. XLA's compiled cost analysis counts a while-loop body once, so under
  model.scan_layers or train.microbatches it reports a fraction of the work."""
  def of(jaxpr):
    total = 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        total += 2 * eqn.outvars[0].aval.size * math.prod(lhs[i] for i in lhs_contract)
      repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
      if eqn.primitive.name == "cond":  # one branch runs: count the dearest
        total += max(of(branch.jaxpr) for branch in eqn.params["branches"])
        continue
      for sub in jaxprs_in_params(eqn.params):
        total += repeat * of(sub)
    return total
  return of(closed_jaxpr.jaxpr)


def train_step_flops(trainer, config):
  """Matmul FLOPs one train step executes per device (the global count over the device
  count), rematerialised recomputation included."""
  state, batch = abstract_train_args(trainer, config)
  return count_flops(trainer.train_step.trace(state, batch).jaxpr) / trainer.mesh.size


def model_flops_per_step(config, vocab_size, mesh):
  """Per-device matmul FLOPs of one train step as the model defines them, MFU's numerator:
  the step traced with model.remat="none", since recomputation is not model work."""
  config = config.copy_and_resolve_references()
  config.model.remat = "none"
  return train_step_flops(build_trainer(config, build_method(config, vocab_size), mesh), config)


@dataclasses.dataclass(frozen=True)
class CompiledReport:
  what: str
  seconds: float  # wall time of lowering and compiling
  cpu_seconds: float  # CPU time of all threads meanwhile (meaningful on a shared machine)
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  xla_flops: float  # per device, from compiled.cost_analysis() (loop bodies counted once)
  out_of_memory: str = ""  # XLA's message when the program cannot be laid out in HBM at all

  @property
  def total_bytes(self):
    """Live at the peak: inputs, outputs not aliased to (donated) inputs, temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def out_of_memory_summary(message):
  """The sentence of XLA:TPU's out-of-memory report that says by how much (the rest lists buffers)."""
  found = re.search(r"Used \S+ of \S+ hbm\. Exceeded hbm capacity by \S+\.", message)
  return found.group(0) if found else " ".join(message.split("::")[0].split())[:300]


def compile_report(what, jitted, mesh, *args):
  start, cpu_start = time.time(), time.process_time()
  try:
    with jax.set_mesh(mesh):
      compiled = jitted.lower(*args).compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    # The TPU compiler refuses a program larger than HBM; its message says by how much.
    return CompiledReport(what, time.time() - start, time.process_time() - cpu_start, 0, 0, 0, 0, 0.0,
                          out_of_memory=out_of_memory_summary(str(e)))
  seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return CompiledReport(what, seconds, cpu_seconds, memory.argument_size_in_bytes, memory.output_size_in_bytes,
                        memory.alias_size_in_bytes, memory.temp_size_in_bytes, float((cost or {}).get("flops", 0.0)))


def sampler_args(trainer, config):
  params = _abstract(trainer.abstract_state["ema"], trainer.state_shardings["ema"])
  model_state = _abstract(trainer.abstract_state["model_state"], trainer.state_shardings["model_state"])
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(trainer.mesh))
  return params, model_state, key


def sampler_settings(config):
  s = config.sample
  return SamplerSettings(steps=s.steps, temperature=s.temperature, final_fill=s.final_fill, cache=s.cache,
                         latent_steps=s.latent_steps, latent_sampler=s.latent_sampler)


def compile_for_slice(config, devices, with_sampler=True):
  """Builds the real trainer on `devices` and compiles its train step (and the sampler).

  Returns (mesh, number of parameters, per-device matmul FLOPs per step {"model", "executed"},
  [CompiledReport]).
  """
  from ladd.job import validate

  mesh = sharding.make_mesh(config.mesh, list(devices))
  validate(config, mesh)
  vocab_size = vocab_size_without_data(config)
  method = build_method(config, vocab_size)
  trainer = build_trainer(config, method, mesh)
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(trainer.abstract_state["params"]))
  reports = [compile_report("train step", trainer.train_step, mesh, *abstract_train_args(trainer, config))]
  if with_sampler:
    num_samples = config.sample.num_samples
    draw = compiled_sampler(trainer.graphdef, method, sampler_settings(config), num_samples)
    reports.append(compile_report(f"sampler ({num_samples} samples, {config.sample.steps} steps)", draw, mesh,
                                  *sampler_args(trainer, config), None))
  flops = {"model": model_flops_per_step(config, vocab_size, mesh), "executed": train_step_flops(trainer, config)}
  return mesh, n_params, flops, reports


def advice(config, report, hbm):
  """One line: by how much a compiled program misses the chip's memory and what helps."""
  over = report.total_bytes - hbm
  knobs = []
  mesh = config.mesh
  if mesh.data != 1 and (report.argument_bytes > report.temp_bytes or report.out_of_memory):
    knobs.append("shard parameters and optimiser state over more chips (--config.mesh.data=1 --config.mesh.fsdp=-1)")
  if report.temp_bytes >= report.argument_bytes or not knobs:
    if config.model.remat != "full":
      knobs.append("--config.model.remat=full" if config.model.remat == "dots_saveable"
                   else "--config.model.remat=dots_saveable (or full)")
    knobs.append(f"--config.train.microbatches={2 * config.train.microbatches} (activations per micro-batch shrink)")
    knobs.append("a smaller --config.data.batch_size")
  shortfall = (f"XLA: {report.out_of_memory}" if report.out_of_memory else
               f"{size(report.total_bytes)} per chip is {size(over)} over the {hbm / GIB:.0f} GiB HBM")
  return f"{report.what} does not fit: {shortfall}; try " + ", or ".join(knobs)


def size(num_bytes):
  return f"{num_bytes / GIB:.2f} GiB" if abs(num_bytes) >= GIB / 10 else f"{num_bytes / 2**20:.2f} MiB"


def format_report(slice_, config, mesh, n_params, flops, reports):
  lines = [f"slice {slice_.name}: {len(slice_.devices)} x {slice_.devices[0].device_kind}, "
           f"{slice_.hbm_per_device / GIB:.0f} GiB HBM each; mesh {sharding.describe(mesh)}",
           f"model: {n_params / 1e6:.1f}M parameters, {config.model.n_layers} layers "
           f"({'scanned' if config.model.scan_layers else 'unrolled'}), remat {config.model.remat}, "
           f"batch {config.data.batch_size} x {config.data.seq_len} in {config.train.microbatches} micro-batch(es)",
           f"train step matmul FLOPs per chip: {flops['model']:.4g} model (MFU counts these), "
           f"{flops['executed']:.4g} executed with remat; XLA cost analysis {reports[0].xla_flops or float('nan'):.4g} "
           "(all ops, each loop body once)"]
  for r in reports:
    if r.out_of_memory:
      lines.append(f"{r.what}: does not compile in {r.seconds:.1f}s: {r.out_of_memory}")
      continue
    lines.append(f"{r.what}: compiled in {r.seconds:.1f}s ({r.cpu_seconds:.1f}s CPU); per chip: arguments {size(r.argument_bytes)}, "
                 f"temporaries {size(r.temp_bytes)}, outputs {size(r.output_bytes)} "
                 f"({size(r.alias_bytes)} aliased to donated inputs), total {size(r.total_bytes)} "
                 f"of {slice_.hbm_per_device / GIB:.0f} GiB ({100 * r.total_bytes / slice_.hbm_per_device:.1f}%)")
  misses = [advice(config, r, slice_.hbm_per_device) for r in reports
            if r.out_of_memory or r.total_bytes > slice_.hbm_per_device]
  return lines, misses
