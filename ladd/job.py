"""What the three entry points share: distributed start-up, validation, and building
dataset, method, mesh and compiled trainer from a config."""

import dataclasses
import faulthandler
import json
import jax
import ml_collections
from etils import epath

from ladd import errors, faults, files, sharding
from ladd.data import build_dataset
from ladd.methods import build_method
from ladd.trainer import build_evaluator, build_trainer


def init_distributed(coordinator_address, num_processes, process_id, auto, peer_timeout_s=60.0):
  """Must run before any other JAX call; only on multi-process launches. A process that
  loses a peer for peer_timeout_s exits with one line (faults.PeerWatchdog)."""
  if peer_timeout_s <= 0:
    raise ValueError(f"--peer_timeout_s must be > 0, got {peer_timeout_s}")
  heartbeat = dict(heartbeat_timeout_seconds=int(2 * peer_timeout_s) + 1)  # JAX's fatal abort comes later
  if num_processes > 1:
    if not coordinator_address:
      raise ValueError("--num_processes > 1 needs --coordinator_address=HOST:PORT")
    # Only CPU devices use it; querying the backend here would initialise it too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **heartbeat)
  elif auto:
    jax.distributed.initialize(**heartbeat)  # TPU pods and SLURM clusters describe themselves
  from jax._src import distributed  # the coordination client is not public API
  state = distributed.global_state
  if state.client is not None and state.num_processes > 1:
    if not errors.debug():  # a lost coordinator aborts in JAX's runtime: its own line, not every thread's stack
      faulthandler.disable()
    faults.PeerWatchdog(state.client, state.process_id, state.num_processes, peer_timeout_s)


def validate(config, mesh):
  data = config.data
  procs = jax.process_count()
  for name, size in (("data.batch_size", data.batch_size), ("data.eval_batch_size", data.eval_batch_size)):
    divisor = sharding.batch_divisor(mesh)
    if size <= 0 or size % divisor:
      raise ValueError(f"{name}={size} must be a positive multiple of data x fsdp = {divisor} (mesh {sharding.describe(mesh)})")
    if size % procs:
      raise ValueError(f"{name}={size} must be divisible by the number of processes ({procs})")
  k = config.train.microbatches
  if k < 1 or data.batch_size % (k * sharding.batch_divisor(mesh)):
    raise ValueError(f"train.microbatches={k} must be >= 1 and split data.batch_size={data.batch_size} into micro-batches "
                     f"that are multiples of data x fsdp = {sharding.batch_divisor(mesh)} (mesh {sharding.describe(mesh)})")
  profile = tuple(config.train.profile_steps)
  if len(profile) != 2 or any(not isinstance(x, int) or x < 0 for x in profile):
    raise ValueError(f"train.profile_steps must be START,COUNT (two integers >= 0), got {config.train.profile_steps}")
  if config.train.steps < 0:
    raise ValueError(f"train.steps must be >= 0, got {config.train.steps}")
  for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    if config.train[name] < 1:
      raise ValueError(f"train.{name} must be >= 1, got {config.train[name]}")


def config_record(config, vocab_size):
  """JSON-safe config plus the facts derived from data, stored in every checkpoint."""
  return dict(config.to_dict(), vocab_size=int(vocab_size))


def config_from_record(record):
  """The config a checkpoint was trained with; keys added to ladd since take their defaults."""
  from ladd.config import default_config
  record = dict(record)
  record.pop("vocab_size", None)
  model = dict(record.get("model", {}))
  if isinstance(model.get("remat"), bool):  # records written before model.remat named a policy
    model["remat"] = "full" if model["remat"] else "none"
  model.setdefault("position_embedding", "none")  # records from before the switch: RoPE only
  config = default_config()
  config.update(dict(record, model=model))
  return config


@dataclasses.dataclass
class Job:
  config: ml_collections.ConfigDict
  dataset: object
  method: object
  mesh: jax.sharding.Mesh
  trainer: object  # a trainer.Trainer; a trainer.Evaluator where the job only samples and evaluates

  @property
  def record(self):
    return config_record(self.config, self.dataset.vocab_size)


def build_job(config, workdir):
  mesh = sharding.make_mesh(config.mesh)
  validate(config, mesh)
  dataset = build_dataset(config.data, workdir, write=jax.process_index() == 0)  # shared files: process 0 writes
  method = build_method(config, dataset.vocab_size, dataset.pad_id)
  return Job(config, dataset, method, mesh, build_trainer(config, method, mesh))


def load_trained(workdir, step=None, which="ema"):
  """Rebuilds the job a checkpoint was trained with, on all local devices (data parallel),
  and restores its parameters (`which`: "ema" or "raw"); job.trainer is an Evaluator:
  no optimizer is built and no optimizer state is read.

  Returns (job, step, params, model_state); errors name the work directory and what is
  missing.
  """
  from ladd import checkpoint  # orbax import is slow; only entry points need it

  if not workdir:
    raise ValueError("--workdir is required")
  workdir = files.resolve(workdir)
  if not epath.Path(checkpoint.checkpoint_dir(workdir)).is_dir():
    raise FileNotFoundError(f"no checkpoints in {workdir}: train first with python -m ladd.train --workdir={workdir}")
  mgr = checkpoint.manager(workdir, read_only=True)
  steps = mgr.all_steps()
  if not steps:
    raise FileNotFoundError(f"no complete checkpoint in {checkpoint.checkpoint_dir(workdir)}")
  if step is not None and step not in steps:
    raise ValueError(f"checkpoint step {step} not found in {workdir}; available: {sorted(steps)}")
  jobs = {}

  def restore(step):
    record = checkpoint.read_config_record(mgr, step)
    key = json.dumps(record, sort_keys=True)
    if key not in jobs:
      jobs[key] = _job_from_record(record, workdir)
    return (jobs[key], *checkpoint.restore_params(mgr, step, jobs[key].trainer, which))

  if step is None:
    step, (job, params, model_state) = checkpoint.restore_newest_readable(mgr, restore)
  else:
    job, params, model_state = restore(step)
  mgr.close()
  return job, step, params, model_state


def _job_from_record(record, workdir):
  """The job a checkpoint's config record describes, data parallel over all local devices."""
  from ladd import checkpoint

  config = config_from_record(record)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  mesh = sharding.make_mesh(config.mesh)
  dataset = build_dataset(config.data, workdir, write=jax.process_index() == 0)  # shared files: process 0 writes
  if dataset.vocab_size != record.get("vocab_size"):
    raise checkpoint.CheckpointError(f"checkpoint vocab_size {record.get('vocab_size')} differs from the data's {dataset.vocab_size}")
  method = build_method(config, dataset.vocab_size, dataset.pad_id)
  return Job(config, dataset, method, mesh, build_evaluator(method, mesh))  # no optimizer
