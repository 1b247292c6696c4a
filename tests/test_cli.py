"""Entry points end to end, every shipped config, and bad input handled cleanly."""

import ast
import glob
import importlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ladd import sharding
from ladd.job import load_trained, validate
from ladd.methods import build_method
from ladd.trainer import Evaluator, build_trainer
from tests.helpers import ROOT, entry_point, host_tree, snapshot, subprocess_env

CONFIGS = [(os.path.basename(p)[:-3], v)
           for p in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))) if not p.endswith("__init__.py")
           for v in importlib.import_module(f"configs.{os.path.basename(p)[:-3]}").VARIANTS]  # every config lists its variants


@pytest.mark.parametrize("name,variant", CONFIGS, ids=[f"{n}:{v}" if v else n for n, v in CONFIGS])
def test_every_shipped_config_builds(name, variant):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  mesh = sharding.make_mesh(config.mesh)
  validate(config, mesh)
  vocab = config.data.vocab_size or (2 if config.data.source == "binsaw" else config.data.bpe_vocab_size)
  trainer = build_trainer(config, build_method(config, vocab), mesh)  # abstract: nothing is allocated
  assert jax.tree.leaves(trainer.abstract_state["params"])


# Every module run as `python -m ladd.X`: the ones with a __main__ block.
ENTRY_POINTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "ladd", "*.py"))
                      if 'if __name__ == "__main__":' in open(p).read())


def test_entry_points_hold_flags_and_main_only():
  """The work an entry point does lives in modules without flags, which library code,
  experiments and tests import; an entry point's only function is main."""
  assert {"train", "sample", "evaluate", "prepare", "compile", "sweep"} <= set(ENTRY_POINTS)
  for name in ENTRY_POINTS:
    with open(os.path.join(ROOT, "ladd", f"{name}.py")) as f:
      tree = ast.parse(f.read())
    defined = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert defined == ["main"], f"ladd/{name}.py defines {defined}"


def test_entry_points_import_together():
  """absl refuses a flag defined twice in one process: shared flags live in ladd/flags.py."""
  code = "import " + ", ".join(f"ladd.{name}" for name in ENTRY_POINTS)
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(1),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


def run(module, *args, devices=1):
  return subprocess.run(entry_point(module, *args), cwd=ROOT, env=subprocess_env(devices),
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("cli") / "run")
  result = run("ladd.train", "--config=configs/shakespeare.py:tiny", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "step 4/4" in result.stdout
  return workdir


def test_train_writes_metrics_checkpoints_and_events(trained):
  with open(os.path.join(trained, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [2, 4]
  for key in ("loss", "nelbo_per_token", "lr", "grad_norm", "tokens_per_sec_per_device"):
    assert key in records[-1]
  assert "eval/bits_per_char" in records[-1] and "eval/ppl_bound" in records[-1]
  assert sorted(os.listdir(os.path.join(trained, "checkpoints"))) == ["2", "4"]
  assert glob.glob(os.path.join(trained, "tensorboard", "events.out.tfevents.*"))


def test_sample_records_every_setting(trained):
  result = run("ladd.sample", f"--workdir={trained}", "--steps=3", "--num_samples=2", "--seed=5", "--temperature=0.9")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "--- sample 1 ---" in result.stdout
  with open(os.path.join(trained, "samples.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 2
  for key, value in dict(method="mdlm", steps=3, seed=5, temperature=0.9, checkpoint_step=4,
                         mask_schedule="linear", dtype="float32", final_fill="sample", params="ema").items():
    assert records[0][key] == value
  assert 1 <= records[0]["nfe"] <= 4 and len(records[0]["text"]) == 32


def test_sample_continues_a_prompt_and_records_it(trained):
  output = os.path.join(trained, "prompted.jsonl")
  result = run("ladd.sample", f"--workdir={trained}", "--prompt=ROMEO:", "--steps=64", "--num_samples=2",
               "--top_k=5", "--length=60", "--block_keep=16", f"--output={output}", "--quiet")
  assert result.returncode == 0, result.stderr[-2000:]
  with open(output) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 2
  for record in records:  # blocks of 32: 32 + 16 + 16 new tokens, cut to 60
    assert record["prompt"] == "ROMEO:" and record["text"].startswith("ROMEO:")
    assert (record["top_k"], record["sampler"], record["noise_bits"], record["blocks"]) == (5, "ancestral", 32, 3)
    assert len(record["tokens"]) == 60 == len(record["text"]) and min(record["tokens"]) >= 0
    assert 3 <= record["nfe"] <= 3 * 65


def test_evaluate_reports_the_bound_and_estimator(trained):
  result = run("ladd.evaluate", f"--workdir={trained}", "--num_batches=2", "--t_samples=2", "--bound_steps=1,4")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout[result.stdout.index("{"):])
  assert report["estimator"]["t_samples"] == 2 and report["estimator"]["sequences"] == 16
  assert report["ppl_bound"] == pytest.approx(2.718281828 ** report["nelbo_per_token"])
  assert 0 < report["bits_per_char"] < 8
  for n in (1, 4):  # the N-step sampler's own bound: one printed line each, and in eval.json
    bound = report["nstep_bounds"][str(n)]
    line = f"N-step bound (N={n}): {bound['nelbo_per_token']:.4f} nats/token, PPL <= {bound['ppl_bound']:.4g}"
    assert line in result.stdout and f"{bound['bits_per_char']:.4f} bits/char" in result.stdout
    assert bound["estimator"]["stages"] == n + 1 and bound["estimator"]["sequences"] == 16
    assert bound["nelbo_per_token"] > 0.9 * report["nelbo_per_token"]  # a fresh model: ~log V both
  with open(os.path.join(trained, "eval.json")) as f:
    assert json.load(f)["nstep_bounds"]["4"] == report["nstep_bounds"]["4"]


BAD_TRAIN_INPUT = {
    "unknown config key": (["--config.model.d_modle=3"], "d_modle"),
    "indivisible batch": (["--config.data.batch_size=7", "--config.mesh.data=-1"], "batch_size=7"),
    "impossible mesh": (["--config.mesh.data=3"], "mesh"),
    "missing dataset": (["--config.data.source=npy", "--config.data.path=/nonexistent/tokens.npy", "--config.data.vocab_size=50"], "/nonexistent/tokens.npy"),
    "incompatible checkpoint": (["--config.model.d_model=48"], "incompatible"),
}


@pytest.mark.parametrize("case", BAD_TRAIN_INPUT, ids=list(BAD_TRAIN_INPUT))
def test_bad_train_input_fails_cleanly_and_keeps_the_workdir(trained, case):
  flags, expected = BAD_TRAIN_INPUT[case]
  before = snapshot(trained)
  result = run("ladd.train", "--config=configs/shakespeare.py:tiny", f"--workdir={trained}", *flags, devices=2)
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
  assert errors and expected in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert snapshot(trained) == before


@pytest.mark.parametrize("module,flags,expected", [
    ("ladd.sample", ["--steps=0"], "steps must be >= 1"),
    ("ladd.sample", ["--temperature=-1"], "temperature must be > 0"),
    ("ladd.sample", ["--prompt=" + "ROMEO: " * 6], "do not fit in the sequence of 32 tokens"),
    ("ladd.sample", ["--prompt=ROMEO€"], "outside the tokenizer's alphabet"),
    ("ladd.evaluate", ["--t_samples=-1"], "t_samples must be >= 1"),
    ("ladd.evaluate", ["--bound_steps=4,0"], "bound_steps must be >= 1"),
    ("ladd.evaluate", ["--sudoku_clues=5"], "17..81 clues, got 5"),
    ("ladd.evaluate", ["--checkpoint_step=99"], "step 99 not found"),
])
def test_bad_sample_and_evaluate_input(trained, module, flags, expected):
  before = snapshot(trained)
  result = run(module, f"--workdir={trained}", *flags)
  assert result.returncode != 0 and expected in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert snapshot(trained) == before


def by_path(tree):
  """{"a/0/b": leaf}: orbax restores list indices as string keys, nnx keeps them as ints."""
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_loading_for_sampling_builds_no_optimizer_and_reads_no_optimizer_state(trained, tmp_path, monkeypatch):
  """A checkpoint whose train state has no optimizer state at all (rewritten without it)
  still loads raw and EMA parameters, with the optimizer unbuildable."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  for item in glob.glob(os.path.join(workdir, "checkpoints", "*", "state")):  # every step: none to fall back on
    state = ocp.StandardCheckpointer().restore(item)
    shutil.rmtree(item)
    writer = ocp.StandardCheckpointer()
    writer.save(item, {k: v for k, v in state.items() if k != "opt_state"})
    writer.wait_until_finished()
  monkeypatch.setattr("ladd.trainer.make_optimizer", lambda *args: pytest.fail("loading built an optimizer"))
  job, step, params, _ = load_trained(workdir, which="raw")
  assert str(step) == os.path.basename(os.path.dirname(item)) == "4"  # the newest, last rewritten
  restored, saved = by_path(host_tree(params)), by_path(state["params"])
  assert restored.keys() == saved.keys()
  for path, value in saved.items():
    np.testing.assert_array_equal(restored[path], value, err_msg=path)
  assert isinstance(job.trainer, Evaluator) and "opt_state" not in job.trainer.abstract_state
  _, _, ema, _ = load_trained(workdir, which="ema")
  assert jax.tree.structure(ema) == jax.tree.structure(params)


def test_missing_checkpoint_is_one_clear_line(tmp_path):
  result = run("ladd.evaluate", f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "no checkpoints in" in result.stderr and "Traceback" not in result.stderr
