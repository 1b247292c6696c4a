"""A real two-process run (CPU collectives over gloo, 4 devices per process, data
sharded by process) logs the same losses as one process with 8 devices, and a checkpoint
of either resumes on the other number of processes with the same data order.

The data are `ladd.prepare` shards (ArrayRecord, padded LM1B style: the hardest source
for this, as every process reads its rows from files and leaves padding out of its
token counts); every source reaches the processes through the same
Dataset.train_iterator / eval_batches."""

import json
import os
import subprocess

import portpicker
import pytest

from ladd.data.prepare import Plan, prepare
from tests.helpers import ROOT, entry_point, snapshot, subprocess_env
from tests.test_prepare import small_bpe_with_eos, write_corpus

def prepared_shards(directory):
  """A tiny prepared corpus: 32 train and 8 held-out padded rows of 16 tokens."""
  write_corpus(directory / "corpus", documents=40)
  small_bpe_with_eos(directory / "bpe.json")
  prepare(Plan(source=str(directory / "corpus"), tokenizer=str(directory / "bpe.json"), seq_len=16,
               packing="pad", held_out_documents=8, documents_per_shard=10),
          str(directory / "prepared"), workers=1, log=lambda line: None)
  return ["--config=configs/binsaw.py:tiny", "--config.data.source=prepared",
          f"--config.data.path={directory / 'prepared'}", "--config.data.tokenizer=bpe",
          "--config.data.seq_len=16", "--config.train.log_every=1", "--config.train.eval_every=3",
          "--config.mesh.data=-1"]


def launch(train_args, workdir, devices, steps, extra=()):
  return subprocess.Popen(entry_point("ladd.train", f"--workdir={workdir}", *train_args, f"--config.train.steps={steps}", *extra),
                          cwd=ROOT, env=subprocess_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def launch_two(train_args, workdir, steps):
  port = portpicker.pick_unused_port()
  return [launch(train_args, workdir, 4, steps, [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"])
          for i in range(2)]


def finish(process):
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err[-3000:]
  return out


def logged(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def assert_same_run(records, reference):
  """Equal losses where both logged a step; 2 x 4 and 1 x 8 devices differ in float rounding."""
  reference = {r["step"]: r for r in reference}
  for record in records:
    assert record["loss"] == pytest.approx(reference[record["step"]]["loss"], rel=1e-5), record["step"]
    assert record["grad_norm"] == pytest.approx(reference[record["step"]]["grad_norm"], rel=1e-4), record["step"]
    if "eval/nelbo_per_token" in record:
      assert record["eval/nelbo_per_token"] == pytest.approx(reference[record["step"]]["eval/nelbo_per_token"], rel=1e-5)


def test_two_processes_match_one_and_resume_on_the_other_count(tmp_path):
  train_args = prepared_shards(tmp_path)
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  workers = launch_two(train_args, two, 3)
  uninterrupted = launch(train_args, one, 8, 5)
  outputs = [finish(p) for p in workers]
  finish(uninterrupted)
  assert "2 process(es), 8 cpu device(s)" in outputs[0]
  assert "step 1/3" in outputs[0] and "step 1/3" not in outputs[1]  # only process 0 reports
  records_two, records_one = logged(two), logged(one)
  assert [r["step"] for r in records_two] == [1, 2, 3] and "eval/nelbo_per_token" in records_two[-1]
  assert_same_run(records_two, records_one)
  assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["2", "3"]
  # The 2-process, 8-device checkpoint loads on one CPU device for evaluation.
  result = subprocess.run(entry_point("ladd.evaluate", f"--workdir={two}", "--num_batches=1"),
                          cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout[result.stdout.index("{"):])["checkpoint_step"] == 3

  # The 2 processes' step 3 resumed by 1 process continues the uninterrupted run's global
  # batches (a restarted or skewed data order changes the losses).
  assert "resumed from step 3" in finish(launch(train_args, two, 8, 5))
  assert [r["step"] for r in logged(two)] == [1, 2, 3, 4, 5]
  assert_same_run(logged(two), records_one)

  # Processes that saved different data positions (not a checkpoint ladd writes) cannot
  # move to another count: one line, exit 2, the work directory untouched.
  data = os.path.join(two, "checkpoints", "5", "data")
  with open(os.path.join(data, "process_0-of-1.json")) as f:
    state = json.load(f)
  os.rename(os.path.join(data, "process_0-of-1.json"), os.path.join(data, "process_0-of-2.json"))
  with open(os.path.join(data, "process_1-of-2.json"), "w") as f:
    json.dump(dict(state, next_index=state["next_index"] - 1), f)
  before = snapshot(two)
  refused = subprocess.run(entry_point("ladd.train", f"--workdir={two}", *train_args, "--config.train.steps=6"),
                           cwd=ROOT, env=subprocess_env(8), capture_output=True, text=True, timeout=600)
  assert refused.returncode == 2, refused.stderr[-3000:]
  assert [line for line in refused.stderr.splitlines() if line.startswith("ladd.")] == [
      "ladd.train: error: checkpoint step 5 was saved by 2 processes at different data positions, which 1 process(es)"
      " cannot continue; resume it with 2 processes"]
  assert snapshot(two) == before

