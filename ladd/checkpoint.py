"""Orbax checkpoints: items `state` (step, params, model_state, optimiser), `ema` (EMA
parameters with model_state: all that sampling and evaluation read), `data` (the grain
iterator, one state per process; it resumes on any number of processes) and `config`
(JSON), in `<workdir>/checkpoints/<step>`.

Restores always go through an abstract target carrying NamedShardings on the *current*
mesh, so a checkpoint written on a pod loads on one CPU and vice versa.
"""

import asyncio
import contextlib
import json
import os
import re
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from ladd import errors, files

# Keys that change what token ids or weights mean without changing any array's shape (a
# new tokenizer or data source of equal vocabulary size, another head split of the same
# projections, another method's loss on the same network): the tree metadata cannot see
# them, so they are compared in the config records. Everything shaped is compared array
# by array (check_compatible).
MEANING_KEYS = ("method", "data.source", "data.tokenizer", "vocab_size", "model.n_heads")


TRAIN_ITEMS = ("step", "params", "model_state", "opt_state")


class CheckpointError(ValueError):
  pass


class UnreadableCheckpoint(CheckpointError):
  """A step whose files cannot be read (truncated, corrupt, missing): an older step may do."""


def checkpoint_dir(workdir):
  return os.path.join(files.resolve(workdir), "checkpoints")


def _drop_read_only_notes(record):
  """Orbax warns that a read-only manager is read-only; sampling and evaluation always are."""
  return not str(record.msg).startswith(("CheckpointManagerOptions.read_only=True", "Given directory is read only"))


def manager(workdir, keep=3, read_only=False):
  if read_only:
    absl_logging.get_absl_logger().addFilter(_drop_read_only_notes)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=not read_only, read_only=read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(mgr, step, state, data_iterator, config_record):
  mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave({k: state[k] for k in TRAIN_ITEMS}),
      ema=ocp.args.StandardSave(_inference_tree(state)),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      config=ocp.args.JsonSave(config_record)))


def _flatten(record, prefix=""):
  out = {}
  for key, value in record.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _leaves(tree):
  """{"a/b/c": (shape, dtype)} of a tree of arrays, abstract arrays or orbax array metadata."""
  def name(key):  # dict keys, named-tuple fields and list indices alike
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)
  return {"/".join(map(name, path)): (tuple(leaf.shape), np.dtype(leaf.dtype))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _describe(shape_dtype):
  shape, dtype = shape_dtype
  return f"{dtype}{list(shape)}"


def check_compatible(mgr, step, targets, current_record, shown=3):
  """Raises one CheckpointError line when the checkpoint at `step` cannot be restored into
  `targets` ({item: abstract tree}) under the config `current_record`: the first `shown`
  arrays whose path, shape or dtype differ between the stored tree metadata and the
  target (or the meaning keys' values)."""
  saved = _flatten(read_config_record(mgr, step))
  current = _flatten(current_record)
  diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}"
           for k in MEANING_KEYS if saved.get(k) != current.get(k)]
  for item, target in targets.items():
    handler = ocp.PyTreeCheckpointHandler()
    try:
      stored = _leaves(handler.metadata(mgr.directory / str(step) / item).tree)
    except Exception as e:
      raise UnreadableCheckpoint(f"checkpoint step {step} in {mgr.directory} is unreadable: {_first_line(e)}") from e
    finally:
      handler.close()
    wanted = _leaves(target)
    for path in sorted(stored.keys() | wanted.keys()):
      if path not in wanted:
        diffs.append(f"{item}/{path} {_describe(stored[path])} only in the checkpoint")
      elif path not in stored:
        diffs.append(f"{item}/{path} {_describe(wanted[path])} not in the checkpoint")
      elif stored[path] != wanted[path]:
        diffs.append(f"{item}/{path}: checkpoint {_describe(stored[path])} vs config {_describe(wanted[path])}")
  if diffs:
    more = f"; and {len(diffs) - shown} more" if len(diffs) > shown else ""
    raise CheckpointError(f"checkpoint step {step} in {mgr.directory} is incompatible with the config: "
                          f"{'; '.join(diffs[:shown])}{more}")


def read_config_record(mgr, step):
  try:
    return mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  except Exception as e:  # orbax raises many types for unreadable directories
    raise UnreadableCheckpoint(f"checkpoint step {step} in {mgr.directory} is unreadable: {_first_line(e)}") from e


def restore_newest_readable(mgr, restore, move_unreadable=False):
  """(step, restore(step)) for the newest complete step that `restore` can read.

  Each newer, unreadable step gets one warning line; with `move_unreadable` (training,
  which saves those step numbers again) it is moved to checkpoints.unreadable/, never
  deleted. When no step can be read, one CheckpointError says so and nothing moves.
  All processes agree: a step that fails on any process is skipped on every process.
  """
  steps = sorted(mgr.all_steps(), reverse=True)
  skipped = []
  for step in steps:
    try:
      with _settled_reads():
        result, problem = restore(step), None
    except UnreadableCheckpoint as e:
      result, problem = None, e
    if _all_processes_ok(problem is None):
      _report_skipped(mgr, skipped, move_unreadable)
      return step, result
    skipped.append((step, problem or "unreadable on another process"))
  raise CheckpointError(f"no readable checkpoint in {mgr.directory}: every step ({', '.join(map(str, steps))}) is "
                        f"damaged ({skipped[0][1]}); nothing was deleted")


class _SettlingEventLoop(asyncio.SelectorEventLoop):
  """Orbax runs each restore in a fresh event loop and closes it as soon as one array read
  fails. The other reads of that step are still in flight; finishing later on TensorStore's
  threads, they print tracebacks about a closed loop after ladd's one error line. This loop
  lets them finish (their errors are the same damage) before it closes."""

  def close(self):
    pending = [task for task in asyncio.all_tasks(self) if not task.done()]
    if pending and not self.is_running() and not self.is_closed():
      self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    super().close()


class _SettlingPolicy(asyncio.DefaultEventLoopPolicy):
  def new_event_loop(self):
    return _SettlingEventLoop()


@contextlib.contextmanager
def _settled_reads():
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_SettlingPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


def _report_skipped(mgr, skipped, move):
  aside = mgr.directory.parent / "checkpoints.unreadable"
  for step, problem in skipped:
    where = ""
    if move:
      target = aside / f"{step}.{int(time.time())}"
      if jax.process_index() == 0:
        aside.mkdir(parents=True, exist_ok=True)
        (mgr.directory / str(step)).rename(target)
      where = f" (moved to {target})"
    errors.warn(f"skipping unreadable checkpoint step {step}{where}: {problem}")
  if move and skipped:
    _all_processes_ok(True)  # a barrier: nobody lists the directory before the move
    mgr.reload()


def _all_processes_ok(ok):
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(multihost_utils.process_allgather(np.asarray(ok)).all())


def _first_line(e):
  """The cause of an orbax / TensorStore failure without the storage spec it dumps."""
  return f"{type(e).__name__}: {e}".splitlines()[0].split(" See full TensorStore details")[0]


def _abstract(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def restore_train(mgr, step, trainer, data_iterator, config_record):
  """Restores state and EMA onto trainer's mesh and the data iterator in place, after
  check_compatible against `config_record` (the current config's), whatever the number
  of processes that saved them."""
  target = _train_target(trainer)
  ema_target = _inference_target(trainer)
  check_compatible(mgr, step, {"ema": ema_target, "state": target}, config_record)  # parameters first
  position = saved_data_position(mgr.directory / str(step) / "data", step)
  try:
    restored = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), ema=ocp.args.StandardRestore(ema_target)))
    data_iterator.set_state(position)
  except Exception as e:
    raise UnreadableCheckpoint(f"cannot restore checkpoint step {step} from {mgr.directory}: {_first_line(e)}") from e
  return dict(restored["state"], ema=restored["ema"]["params"])


_DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")  # grain's name for one process's iterator state


def saved_data_position(data_dir, step):
  """The train iterator state this process resumes from, whatever the number of
  processes that saved it.

  Grain saves one state per process. The global batch order does not depend on the
  process count (Dataset.train_iterator: process p of n reads its rows of each global
  batch), so after k global batches every process's state is the same and names no
  process or count: any one of them continues the same global batches on any number
  of processes. The same number of processes takes its own states; states that differ
  cannot move to another number, and that resume is refused.
  """
  try:
    found = sorted((int(m[2]), int(m[1])) for m in map(_DATA_FILE.fullmatch, (f.name for f in data_dir.iterdir())) if m)
    saved_processes = found[-1][0] if found else 0
    if not found or found != [(saved_processes, i) for i in range(saved_processes)]:
      names = ", ".join(f"process_{i}-of-{n}.json" for n, i in found) or "no iterator state"
      raise ValueError(f"it holds {names}, not one state per process")
    states = [json.loads((data_dir / f"process_{i}-of-{saved_processes}.json").read_text()) for i in range(saved_processes)]
  except Exception as e:
    raise UnreadableCheckpoint(f"cannot read the data position of checkpoint step {step} in {data_dir}: {_first_line(e)}") from e
  if saved_processes == jax.process_count():
    return states[jax.process_index()]
  if any(state != states[0] for state in states):
    raise CheckpointError(f"checkpoint step {step} was saved by {saved_processes} processes at different data positions,"
                          f" which {jax.process_count()} process(es) cannot continue; resume it with {saved_processes} processes")
  return states[0]


def _inference_tree(state):
  """What sampling and evaluation need: EMA parameters and the non-parameter variables."""
  return {"params": state["ema"], "model_state": state["model_state"]}


def _train_target(trainer):
  return {k: _abstract(trainer.abstract_state[k], trainer.state_shardings[k]) for k in TRAIN_ITEMS}


def _inference_target(trainer):
  return {"params": _abstract(trainer.abstract_state["ema"], trainer.state_shardings["ema"]),
          "model_state": _abstract(trainer.abstract_state["model_state"], trainer.state_shardings["model_state"])}


def restore_params(mgr, step, evaluator, which="ema"):
  """(params, model_state) for sampling and evaluation; params are EMA by default, raw
  ones come from the train state without reading its optimizer state."""
  try:
    if which == "ema":
      restored = mgr.restore(step, args=ocp.args.Composite(ema=ocp.args.StandardRestore(_inference_target(evaluator))))["ema"]
    else:
      target = {k: _abstract(evaluator.abstract_state[k], evaluator.state_shardings[k]) for k in ("params", "model_state")}
      restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))["state"]
  except Exception as e:
    raise UnreadableCheckpoint(f"cannot restore parameters of step {step} from {mgr.directory}: {_first_line(e)}") from e
  return restored["params"], restored["model_state"]


def write_json(path, record):
  files.write_text(path, json.dumps(record, indent=2))
