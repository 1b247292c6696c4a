"""A real two-process run (CPU collectives over gloo, 4 devices per process, data
sharded by process) logs the same losses as one process with 8 devices."""

import json
import os
import subprocess

import portpicker
import pytest

from tests.helpers import ROOT, entry_point, subprocess_env

TRAIN_ARGS = ["--config=configs/binsaw.py:tiny", "--config.train.steps=3", "--config.train.log_every=1",
              "--config.train.eval_every=3", "--config.mesh.data=-1"]


def launch(workdir, devices, extra=()):
  return subprocess.Popen(entry_point("ladd.train", f"--workdir={workdir}", *TRAIN_ARGS, *extra),
                          cwd=ROOT, env=subprocess_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err[-3000:]
  return out


def logged(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_two_processes_match_one(tmp_path):
  port = portpicker.pick_unused_port()
  two = str(tmp_path / "two")
  workers = [launch(two, 4, [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"])
             for i in range(2)]
  one = launch(str(tmp_path / "one"), 8)
  outputs = [finish(p) for p in workers]
  finish(one)
  assert "2 process(es), 8 cpu device(s)" in outputs[0]
  assert "step 1/3" in outputs[0] and "step 1/3" not in outputs[1]  # only process 0 reports
  records_two, records_one = logged(two), logged(str(tmp_path / "one"))
  assert [r["step"] for r in records_two] == [1, 2, 3]
  for a, b in zip(records_two, records_one):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
  assert records_two[-1]["eval/nelbo_per_token"] == pytest.approx(records_one[-1]["eval/nelbo_per_token"], rel=1e-5)
  assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["2", "3"]
  # The 2-process, 8-device checkpoint loads on one CPU device for evaluation.
  result = subprocess.run(entry_point("ladd.evaluate", f"--workdir={two}", "--num_batches=1"),
                          cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout[result.stdout.index("{"):])["checkpoint_step"] == 3
