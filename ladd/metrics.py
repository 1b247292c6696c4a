"""Training metrics: console lines, metrics.jsonl and TensorBoard events (process 0 only)."""

import json
import math
import os
import sys
import time

import jax
from etils import epath

from ladd import files

# Dense bf16 peak FLOP/s per device, used for MFU; config train.peak_tflops_per_device overrides.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}
# Row columns that measure the machine, not the run: two runs of the same training differ only here.
TIMING_KEYS = frozenset({"time", "tokens_per_sec_per_device", "step_time_s", "data_wait_s", "mfu"})


def peak_flops_per_device(override_tflops=0.0):
  if override_tflops > 0:
    return override_tflops * 1e12
  kind = jax.devices()[0].device_kind
  matches = [name for name in PEAK_FLOPS if name.lower() in kind.lower()]
  return PEAK_FLOPS[max(matches, key=len)] if matches else None


class MetricWriter:
  """metrics.jsonl and TensorBoard events that hold each step once.

  A run that starts at `start_step` (the restored checkpoint, 0 when fresh) replays the
  steps after it, so the rows past it are dropped from metrics.jsonl (rewritten
  atomically) and TensorBoard is told to purge its events from start_step + 1 on.
  """

  def __init__(self, workdir, enabled=True, start_step=0):
    self.enabled = enabled
    self.jsonl = None
    self.tb = None
    if enabled:
      path = os.path.join(workdir, "metrics.jsonl")
      drop_rows_after(path, start_step)
      self.jsonl = files.open_append(path)
      from tensorboardX import SummaryWriter  # heavy import, only on the writing process
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

  def write(self, step, metrics):
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time(), **{k: _plain(v) for k, v in metrics.items()}}
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    for name, value in record.items():
      if name not in ("step", "time") and isinstance(value, (int, float)) and math.isfinite(value):
        self.tb.add_scalar(name, value, int(step))
    self.tb.flush()

  def close(self):
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


def drop_rows_after(path, step):
  """Keeps the rows of a metrics.jsonl up to `step` (and any complete line only: a kill
  can leave half a row); the file is replaced atomically."""
  path = epath.Path(path)
  if not path.exists():
    return
  lines = path.read_text().splitlines(keepends=True)
  kept = [line for line in lines if line.endswith("\n") and _row_step(line) <= step]
  if kept != lines:
    files.write_text(path, "".join(kept))


def _row_step(line):
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return math.inf  # unparseable (a torn write): dropped


def _plain(value):
  try:
    return float(value)
  except (TypeError, ValueError):
    return value


def console(step, total, metrics, keys, eta_s=None):
  parts = [f"step {step}/{total}"]
  for key in keys:
    if key in metrics and metrics[key] is not None:
      value = metrics[key]
      parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
  if eta_s is not None:
    parts.append(f"eta {duration(eta_s)}")
  print(" | ".join(parts), flush=True)


def duration(seconds):
  seconds = int(round(seconds))
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def progress(items, total, label):
  """Yields `items`, with a `label: i/total (p%)` line on stderr (process 0) at every tenth
  of the way when there is more than one item: long sampling and evaluation show they move."""
  start = time.time()
  marks = {max(1, round(total * k / 10)) for k in range(1, 11)} if total > 1 else set()
  for i, item in enumerate(items, 1):
    yield item
    if i in marks and jax.process_index() == 0:
      print(f"{label}: {i}/{total} ({100 * i // total}%), {duration(time.time() - start)}", file=sys.stderr, flush=True)
