"""What real runs meet, through the real entry points as subprocesses: damaged
checkpoints, resumes that keep metrics true, non-finite losses, SIGTERM / SIGKILL, and
a lost process of a multi-process run."""

import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import portpicker
import pytest
from tensorboardX.proto import event_pb2

from tests.helpers import ROOT, entry_point, host_tree, subprocess_env

TINY = ["--config=configs/binsaw.py:tiny", "--config.train.eval_every=100"]


def run(module, *args, devices=1, env=None):
  return subprocess.run(entry_point(module, *args), cwd=ROOT, env=dict(subprocess_env(devices), **(env or {})),
                        capture_output=True, text=True, timeout=600)


def ladd_lines(stderr):
  """The lines ladd itself writes to stderr (absl-formatted library logs excluded)."""
  return [line for line in stderr.splitlines() if line.startswith("ladd.")]


def damage(workdir, step):
  """Truncates every array file of a checkpoint step (as a full disk or a killed copy would)."""
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "*", "ocdbt.process_0", "d", "*"))
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(10)


def saved(workdir, step):
  """A checkpoint as host arrays: train state, EMA item and each process's data-iterator state."""
  path = os.path.join(workdir, "checkpoints")
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True)) as mgr:
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), ema=ocp.args.StandardRestore()))
  data = {}
  for name in sorted(glob.glob(os.path.join(path, str(step), "data", "process_*.json"))):
    with open(name) as f:
      data[os.path.basename(name)] = json.load(f)
  return dict(host_tree({"state": restored["state"], "ema": restored["ema"]}), data=data)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def metric_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def tensorboard_scalars(workdir):
  """{tag: {step: value}} as TensorBoard shows it: events files in order, and a
  SessionLog.START at step P in a later file hides the earlier events at steps >= P."""
  files = sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")))
  shown = {}
  for path in files:
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        shown = {(tag, step): value for (tag, step), value in shown.items() if step < event.step}
      for value in event.summary.value:
        assert (value.tag, event.step) not in shown, f"{value.tag} logged twice at step {event.step} in {path}"
        shown[value.tag, event.step] = value.simple_value
  by_tag = {}
  for (tag, step), value in shown.items():
    by_tag.setdefault(tag, {})[step] = value
  return by_tag


def assert_metrics_hold_each_step_once(workdir, steps):
  rows = metric_rows(workdir)
  assert [r["step"] for r in rows] == steps
  assert tensorboard_scalars(workdir)["loss"] == pytest.approx({r["step"]: r["loss"] for r in rows})


# One device and 8 steps: the faults are the process's, not the mesh's (sharded resume is
# tests/test_training.py's and tests/test_multiprocess.py's), and a save every step gives
# every kill a fresh checkpoint to land on or in.
STEPS = 8
KILL_CHAIN = [f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=1", "--config.train.log_every=1",
              "--config.train.eval_every=5", "--config.train.keep_checkpoints=3"]
DETERMINISTIC = ("loss", "nelbo_per_token", "grad_norm", "lr", "mask_fraction", "eval/nelbo_per_token", "eval/ppl_bound")


def launch(workdir, *extra, output=subprocess.PIPE):
  return subprocess.Popen(entry_point("ladd.train", *TINY, *KILL_CHAIN, f"--workdir={workdir}", *extra), cwd=ROOT,
                          env=subprocess_env(1), stdout=output, stderr=output, text=True)


def kill_at(process, step, delay, sig):
  """Sends `sig` `delay` seconds after the process reports `step` (mid-step or mid-save)."""
  before = read_until(process, f"step {step}/{STEPS}")
  time.sleep(delay)
  process.send_signal(sig)
  out, err = process.communicate(timeout=300)
  return process.returncode, "".join(before) + out, err


def complete_steps(workdir):
  """Step directories (a killed save leaves a `<step>.orbax-checkpoint-tmp*` one too)."""
  return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())


def newest(workdir):
  return complete_steps(workdir)[-1]


def test_killed_and_preempted_runs_resume_to_the_uninterrupted_result(tmp_path):
  """SIGKILL at seeded random points (one newest checkpoint damaged on the way), then
  SIGTERM, then to the end: parameters, EMA, optimiser, data position and metrics equal
  an uninterrupted run's bit for bit; sample and evaluate then skip a damaged step too."""
  workdir = str(tmp_path / "killed")
  rng = np.random.default_rng(13)
  code, _, _ = kill_at(launch(workdir), int(rng.integers(2, 4)), rng.uniform(0, 0.05), signal.SIGKILL)
  assert code == -signal.SIGKILL
  # The uninterrupted run (saving only at the end: saves do not change the state) runs on
  # the other core meanwhile, with the programs the first launch left in the shared cache.
  straight = str(tmp_path / "straight")
  log = open(tmp_path / "straight.log", "w")  # a file: nobody reads a pipe from it until the end
  uninterrupted = launch(straight, f"--config.train.checkpoint_every={STEPS}", output=log)
  damaged = newest(workdir)
  assert 2 <= damaged <= 5
  damage(workdir, damaged)
  code, out, err = kill_at(launch(workdir), int(rng.integers(damaged, 6)), rng.uniform(0, 0.05), signal.SIGKILL)
  assert code == -signal.SIGKILL
  assert f"resumed from step {damaged - 1}" in out
  [warning] = ladd_lines(err)
  assert f"skipping unreadable checkpoint step {damaged} (moved to" in warning
  assert os.listdir(os.path.join(workdir, "checkpoints.unreadable"))  # kept, not deleted

  assert newest(workdir) <= STEPS - 2
  code, out, err = kill_at(launch(workdir), newest(workdir) + 1, rng.uniform(0, 0.05), signal.SIGTERM)
  assert code == 0, err[-2000:]
  [stopped] = [line for line in out.splitlines() if line.startswith("SIGTERM: stopped after step")]
  assert f"checkpoint saved in {workdir}/checkpoints/{newest(workdir)};" in stopped
  result = run("ladd.train", *TINY, *KILL_CHAIN, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"resumed from step {stopped.split()[4].rstrip(';')} " in result.stdout
  assert uninterrupted.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()[-2000:]
  log.close()

  a, b = saved(workdir, STEPS), saved(straight, STEPS)
  assert_trees_equal(a["state"], b["state"])
  assert_trees_equal(a["ema"], b["ema"])
  assert a["data"] == b["data"]
  rows, reference = metric_rows(workdir), metric_rows(straight)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert [{k: r.get(k) for k in DETERMINISTIC} for r in rows] == [{k: r.get(k) for k in DETERMINISTIC} for r in reference]
  assert_metrics_hold_each_step_once(workdir, list(range(1, STEPS + 1)))

  damage(workdir, STEPS)
  result = run("ladd.sample", f"--workdir={workdir}", "--num_samples=2", "--quiet")
  assert result.returncode == 0, result.stderr[-2000:]
  assert [line.split(":")[1] for line in ladd_lines(result.stderr)] == [" warning"]
  assert f"skipping unreadable checkpoint step {STEPS}" in ladd_lines(result.stderr)[0]
  assert "Traceback" not in result.stderr
  with open(os.path.join(workdir, "samples.jsonl")) as f:
    assert {json.loads(line)["checkpoint_step"] for line in f} == {STEPS - 1}

  for step in complete_steps(workdir):
    damage(workdir, step)
  result = run("ladd.evaluate", f"--workdir={workdir}")
  assert result.returncode == 2
  [line] = ladd_lines(result.stderr)
  assert line.startswith("ladd.evaluate: error: no readable checkpoint")
  assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
  assert complete_steps(workdir) == [STEPS - 2, STEPS - 1, STEPS]  # nothing deleted


def test_a_non_finite_step_stops_the_run_or_is_skipped(tmp_path):
  """optim.lr = 1e30 with no warm-up: step 1 has lr 0, step 2 moves every weight by ~1e30,
  so the loss of step 3 overflows."""
  workdir = str(tmp_path / "run")
  args = ["ladd.train", *TINY, f"--workdir={workdir}", "--config.optim.lr=1e30", "--config.optim.warmup_steps=0",
          "--config.train.steps=5", "--config.train.checkpoint_every=1", "--config.train.log_every=1",
          "--config.train.keep_checkpoints=10"]
  result = run(*args)
  assert result.returncode == 2
  [line] = ladd_lines(result.stderr)
  assert line.startswith("ladd.train: error: non-finite loss or gradient norm at step 3")
  assert "last good checkpoint: step 2 in" in line and "Traceback" not in result.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]  # step 3 was never saved
  good = saved(workdir, 2)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves([good["state"], good["ema"]]))

  result = run(*args, "--config.train.skip_nonfinite=True")  # resumes from step 2
  assert result.returncode == 0, result.stderr[-2000:]
  warnings = ladd_lines(result.stderr)
  assert len(warnings) == 3 and "skipped 1 non-finite step(s) up to step 5 (3 in this run)" in warnings[-1]
  assert metric_rows(workdir)[-1]["skipped_nonfinite_steps"] == 3
  final = saved(workdir, 5)  # no update of steps 3-5 was applied; the data moved on
  assert_trees_equal({k: v for k, v in final["state"].items() if k != "step"},
                     {k: v for k, v in good["state"].items() if k != "step"})
  assert_trees_equal(final["ema"], good["ema"])
  assert final["state"]["step"] == 5 and final["data"] != good["data"]


def launch_two(workdir, *extra):
  port = portpicker.pick_unused_port()
  return [subprocess.Popen(
      entry_point("ladd.train", *TINY, f"--workdir={workdir}", "--config.train.log_every=1", "--peer_timeout_s=5",
                  f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}", *extra),
      cwd=ROOT, env=subprocess_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def read_until(process, text):
  """Stdout lines of `process` up to the first that contains `text`."""
  lines = []
  for line in process.stdout:
    lines.append(line)
    if text in line:
      return lines
  raise AssertionError(f"no {text!r} in the output: {''.join(lines)[-2000:]} {process.stderr.read()[-2000:]}")


def test_two_process_preemption_a_lost_process_and_relaunch(tmp_path):
  workdir = str(tmp_path / "two")
  steps = ["--config.train.steps=8", "--config.train.checkpoint_every=2"]
  workers = launch_two(workdir, *steps)
  read_until(workers[0], "step 1/8")
  workers[1].send_signal(signal.SIGTERM)  # a preemption notice reaching one process only
  outputs = [p.communicate(timeout=300) for p in workers]
  assert [p.returncode for p in workers] == [0, 0], outputs[1][1][-2000:]
  [stopped] = [line for line in outputs[0][0].splitlines() if line.startswith("SIGTERM: stopped after step")]
  preempted = int(stopped.split()[4].rstrip(";"))  # both processes agreed on it and saved it
  assert preempted < 8 and newest(workdir) == preempted

  workers = launch_two(workdir, *steps)
  read_until(workers[0], f"step {preempted + 2}/8")
  workers[1].kill()
  out, err = workers[0].communicate(timeout=120)  # not a hang in a collective
  workers[1].wait()
  assert workers[0].returncode == 3
  assert [line for line in err.splitlines() if line.startswith("ladd.train: error: lost process 1 of 2")], err[-2000:]
  before = {r["step"]: r for r in metric_rows(workdir)}
  for step in complete_steps(workdir):  # relaunch from the preemption checkpoint
    if step > preempted:
      shutil.move(os.path.join(workdir, "checkpoints", str(step)), str(tmp_path / str(step)))

  workers = launch_two(workdir, *steps)
  assert [p.communicate(timeout=300)[0] and p.returncode for p in workers] == [0, 0]
  after = {r["step"]: r for r in metric_rows(workdir)}
  assert sorted(after) == list(range(1, 9)) and len(metric_rows(workdir)) == 8
  replayed = [s for s in before if s > preempted]
  assert len(replayed) >= 2  # steps trained twice from the same checkpoint give identical numbers
  for s in replayed:
    assert (after[s]["loss"], after[s]["grad_norm"]) == (before[s]["loss"], before[s]["grad_norm"])
