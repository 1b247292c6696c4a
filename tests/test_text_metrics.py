"""Sample metrics for text: gen-PPL under an AR judge, unigram entropy, repeated n-grams."""

import dataclasses
import json
import subprocess

import numpy as np
import pytest

from ladd.data.shakespeare import load_shakespeare
from ladd.data.zero_shot import zero_shot_dataset
from ladd.evaluation import evaluate
from ladd.job import load_trained
from ladd.text_metrics import Judge, pooled_stderr, repeated_ngrams, sample_metrics, unigram_entropy
from tests.helpers import ROOT, entry_point, subprocess_env


def test_entropy_and_repeated_ngrams_known_values():
  assert unigram_entropy(np.full(50, 7)) == 0.0  # a constant sample
  np.testing.assert_allclose(unigram_entropy(np.array([1, 2, 1, 2])), np.log(2))
  np.testing.assert_allclose(unigram_entropy(np.arange(10)), np.log(10))
  assert repeated_ngrams(np.array([1, 2, 3, 1, 2, 3]), 3) == (1, 4)  # (1,2,3) twice
  assert repeated_ngrams(np.array([1, 2, 3, 4]), 2) == (0, 3)
  assert repeated_ngrams(np.array([5, 5, 5, 5]), 2) == (2, 3)


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
  """A small character-level AR judge trained briefly on the Shakespeare plays."""
  workdir = str(tmp_path_factory.mktemp("judge") / "ar")
  run = subprocess.run(entry_point(
      "ladd.train", "--config=configs/shakespeare.py:tiny", f"--workdir={workdir}",
      "--config.method=ar", "--config.model.d_model=64", "--config.model.n_heads=4",
      "--config.optim.lr=3e-3", "--config.optim.warmup_steps=10", "--config.train.steps=80",
      "--config.train.log_every=80", "--config.train.eval_every=80",
      "--config.train.checkpoint_every=80"), cwd=ROOT, env=subprocess_env(1),
      capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  job, step, params, model_state = load_trained(workdir)
  return workdir, job, Judge.from_job(job, params, model_state, {"workdir": workdir}), (params, model_state)


def records(texts):
  return [{"method": "test", "steps": 1, "index": i, "text": t} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def held_out(judge):
  _, job, _, (params, model_state) = judge
  result = evaluate(job, params, model_state, 16, 1, 0)  # 128 windows
  windows = [job.dataset.eval_examples[i] for i in range(result["estimator"]["sequences"])]
  return result, [job.dataset.decode(w) for w in windows]


def test_gen_ppl_of_held_out_text_is_its_perplexity(judge, held_out):
  result, texts = held_out
  metrics = sample_metrics(records(texts), judge[2])
  assert metrics["tokens"] == result["estimator"]["tokens"]
  np.testing.assert_allclose(metrics["gen_ppl"], result["ppl"], rtol=1e-5)
  assert 2 < result["ppl"] < 0.5 * judge[1].dataset.vocab_size  # the judge learnt something


def test_gen_ppl_stderr_is_the_spread_of_samples_scored_one_by_one(judge, held_out):
  scorer = judge[2]
  texts = held_out[1][:12] + ["To be, or not to be"]
  alone = [sample_metrics(records([t]), scorer) for t in texts]
  nlls = np.array([m["gen_nll_per_token"] * m["tokens"] for m in alone])
  lengths = np.array([m["tokens"] for m in alone], np.float64)
  pooled = sample_metrics(records(texts), scorer)
  np.testing.assert_allclose(pooled["gen_nll_per_token"], nlls.sum() / lengths.sum(), rtol=1e-6)
  np.testing.assert_allclose(pooled["gen_nll_per_token_stderr"], pooled_stderr(nlls, lengths), rtol=1e-5)
  # equal lengths: the ratio estimator's standard error is that of the per-sample means
  same = nlls[:12] / lengths[:12] * 64
  np.testing.assert_allclose(pooled_stderr(same, np.full(12, 64.0)),
                             np.std(same / 64, ddof=1) / np.sqrt(12), rtol=1e-12)
  assert pooled_stderr(nlls[:1], lengths[:1]) == 0.0


def test_gen_ppl_of_training_text_is_close_to_held_out(judge, held_out):
  _, job, scorer, _ = judge
  texts = [job.dataset.decode(job.dataset.train_examples[i]) for i in range(0, 20000, 200)]
  np.testing.assert_allclose(sample_metrics(records(texts), scorer)["gen_ppl"], held_out[0]["ppl"],
                             rtol=0.15)


def test_gen_ppl_of_uniform_random_tokens_is_vocabulary_scale(judge):
  _, job, scorer, _ = judge
  vocab = job.dataset.vocab_size
  rng = np.random.default_rng(0)
  draws = [rng.integers(0, vocab - 1, 64) for _ in range(16)]  # any id but <unk>
  metrics = sample_metrics(records([job.dataset.decode(ids) for ids in draws]), scorer)
  assert 0.8 * vocab < metrics["gen_ppl"] < 20 * vocab
  # The judge re-tokenises the text into the same ids.
  np.testing.assert_allclose(metrics["unigram_entropy"], np.mean([unigram_entropy(ids) for ids in draws]))


def test_evaluate_scores_a_samples_file(judge, held_out, tmp_path):
  workdir, _, scorer, _ = judge
  samples = tmp_path / "samples.jsonl"
  texts = held_out[1][:8] + ["aaaa aaaa aaaa"]
  samples.write_text("".join(json.dumps(r) + "\n" for r in records(texts)))
  run = subprocess.run(entry_point("ladd.evaluate", f"--samples={samples}", f"--judge={workdir}"),
                       cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  written = json.loads((tmp_path / "samples.metrics.json").read_text())
  expected = sample_metrics(records(texts), scorer)
  np.testing.assert_allclose(written["gen_ppl"], expected["gen_ppl"], rtol=1e-5)
  assert written["judge"]["method"] == "ar" and written["judge"]["checkpoint_step"] == 80
  assert written["judge_tokenizer"]["kind"] == "char"
  assert written["samplers"] == [{"method": "test", "steps": 1, "samples": 9}]
  bad = subprocess.run(entry_point("ladd.evaluate", f"--samples={samples}"), cwd=ROOT,
                       env=subprocess_env(1), capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "ladd.evaluate: error: --samples needs --judge" in bad.stderr


def test_zero_shot_reports_what_the_tokenizer_cannot_represent(judge, held_out, tmp_path):
  _, job, _, _ = judge
  _, plays = load_shakespeare(job.config.data.eval_plays)
  (tmp_path / "plays").mkdir()
  for i, play in enumerate(plays):  # one document per file, as in training
    (tmp_path / "plays" / f"{i:02d}.txt").write_text(play)
  plays_job = dataclasses.replace(job, dataset=zero_shot_dataset(job.dataset, str(tmp_path / "plays"))[0])
  result = evaluate(plays_job, *judge[3], 16, 1, 0)
  np.testing.assert_allclose(result["ppl"], held_out[0]["ppl"], rtol=1e-5)  # the same text
  seen = set(job.dataset.tokenizer.chars)
  text = "To be, or not to be €€ 😀 " * 3
  (tmp_path / "odd.txt").write_text(text)
  dataset, report = zero_shot_dataset(job.dataset, str(tmp_path / "odd.txt"))
  unseen = sum(c not in seen for c in text)
  assert unseen >= 9 and report["unrepresentable_characters"] == report["unknown_tokens"] == unseen
  # A character tokenizer ends the document with a newline.
  assert report["tokens"] == len(text) + 1 and len(dataset.eval_examples) == (len(text) + 1) // 32


def test_sweep_writes_the_frontier(judge, tmp_path):
  workdir = judge[0]
  out = tmp_path / "sweep"
  run = subprocess.run(entry_point("ladd.sweep", f"--workdirs={workdir}", f"--judge={workdir}",
                                   "--steps=2", "--temperatures=1.0,0.5", "--num_samples=4",
                                   f"--output={out}"),
                       cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  sweep = json.loads((out / "sweep.json").read_text())
  assert [(r["steps"], r["temperature"], r["nfe"]) for r in sweep["rows"]] == [(2, 1.0, 32), (2, 0.5, 32)]
  samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
  again = sample_metrics([s for s in samples if s["temperature"] == 0.5], judge[2])
  np.testing.assert_allclose(sweep["rows"][1]["gen_ppl"], again["gen_ppl"], rtol=1e-5)
  assert (out / "frontier.md").read_text().count("\n| ") == 3 and (out / "frontier.png").stat().st_size > 0
