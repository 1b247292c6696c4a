"""ladd.prepare: deterministic, resumable shards with a manifest that training reads."""

import json
import subprocess

import jax
import numpy as np
import pytest
import tokenizers as hf

from ladd import sharding
from ladd.config import default_config, make_tiny
from ladd.data import build_dataset
from ladd.data.errors import DataError
from ladd.data.prepare import Plan, prepare
from ladd.diffusion.masking import mask_tokens
from ladd.evaluation import evaluate
from ladd.job import build_job
from tests.helpers import ROOT, entry_point, subprocess_env


def write_corpus(directory, documents=23):
  rng = np.random.default_rng(0)
  words = "the quick brown fox jumps over a lazy dog near the river bank".split()
  directory.mkdir()
  for i in range(documents):
    (directory / f"doc{i:03d}.txt").write_text(" ".join(rng.choice(words, rng.integers(3, 60))))


def small_bpe_with_eos(path):
  """A tokenizers JSON file with GPT-2's end-of-text token (fast to load in workers)."""
  tokenizer = hf.Tokenizer(hf.models.BPE())
  tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = hf.decoders.ByteLevel()
  trainer = hf.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                   initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(["the quick brown fox jumps over a lazy dog"] * 20, trainer)
  tokenizer.save(str(path))


def run_prepare(*args):
  return subprocess.run(entry_point("ladd.prepare", *args), cwd=ROOT, env=subprocess_env(1),
                        capture_output=True, text=True, timeout=300)


def files(directory):
  return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_prepare_twice_and_resumed_give_identical_shards(tmp_path):
  write_corpus(tmp_path / "corpus")
  small_bpe_with_eos(tmp_path / "bpe.json")
  common = [f"--source={tmp_path / 'corpus'}", f"--tokenizer={tmp_path / 'bpe.json'}",
            "--seq_len=16", "--held_out_documents=5", "--documents_per_shard=3"]
  first = run_prepare(*common, "--workers=2", f"--output={tmp_path / 'a'}")  # real worker processes
  assert first.returncode == 0, first.stderr[-2000:]
  # The other run prepares in its own process: shards must not depend on the worker count.
  interrupted = run_prepare(*common, "--workers=1", f"--output={tmp_path / 'b'}", "--stop_after_shards=3")
  assert interrupted.returncode == 0, interrupted.stderr[-2000:]
  assert "rerun the same command to resume" in interrupted.stdout
  assert len(list((tmp_path / "b").glob("*.done.json"))) == 3
  assert not (tmp_path / "b" / "manifest.json").exists()
  resumed = run_prepare(*common, "--workers=1", f"--output={tmp_path / 'b'}")
  assert resumed.returncode == 0 and "3 done already" in resumed.stdout, resumed.stderr[-2000:]
  a, b = files(tmp_path / "a"), files(tmp_path / "b")
  assert len([n for n in a if n.endswith(".array_record")]) == 8  # 6 train + 2 eval shards
  assert a == b  # shards, markers and manifest: byte for byte
  manifest = json.loads(a["manifest.json"])
  assert manifest["splits"]["eval"]["documents"] == 5 and manifest["pad_id"] is None
  changed = run_prepare(*common[:-1], "--documents_per_shard=4", f"--output={tmp_path / 'b'}")
  assert changed.returncode == 2
  assert "ladd.prepare: error:" in changed.stderr and "documents_per_shard" in changed.stderr


def test_prepare_bad_input(tmp_path):
  with pytest.raises(DataError, match="no .txt or .jsonl files"):
    prepare(Plan(source=str(tmp_path / "missing")), str(tmp_path / "out"), workers=1)
  write_corpus(tmp_path / "corpus", documents=3)
  with pytest.raises(DataError, match="leaves none to train on"):
    prepare(Plan(source=str(tmp_path / "corpus"), held_out_documents=3), str(tmp_path / "o2"),
            workers=1)


def test_pad_positions_are_never_masked():
  x0 = np.array([[5, 6, 7, 9, 9, 9]] * 4, np.int32)
  x_t = np.asarray(mask_tokens(jax.random.key(0), x0, np.zeros(4, np.float32), 99, x0 != 9))
  assert (x_t[:, :3] == 99).all() and (x_t[:, 3:] == 9).all()


def prepared_config(directory, method):
  c = make_tiny(default_config())
  c.method = method
  c.data.update(source="prepared", path=str(directory), tokenizer="gpt2", seq_len=16,
                batch_size=8, eval_batch_size=8)
  c.train.update(steps=2, eval_every=2, checkpoint_every=2)
  return c


def test_padded_gpt2_shards_from_tfds_train_and_never_count_padding(tiny_tfds, tmp_path):
  tfds, data_dir = tiny_tfds
  out = tmp_path / "prepared"
  plan = Plan(source="tfds:ladd_tiny_text", tfds_data_dir=data_dir, tokenizer="gpt2",
              seq_len=16, packing="pad", held_out_documents=16, documents_per_shard=16)
  manifest = prepare(plan, str(out), workers=1, log=lambda line: None)
  assert manifest["vocab_size"] == 50258 and manifest["pad_id"] == 50257
  assert manifest["splits"]["train"]["sequences"] == 44  # one row per record, 60 - 16
  dataset = build_dataset(prepared_config(out, "ar").data, None)
  first_eval = tfds.data_source("ladd_tiny_text", split="train", data_dir=data_dir)[44]["text"].decode()
  row = dataset.eval_examples[0]
  ids = dataset.tokenizer.encode(first_eval).tolist() + [50256]
  assert row.tolist() == (ids + [50257] * 16)[:16]
  job = build_job(prepared_config(out, "ar"), None)
  fresh = job.trainer.init()
  batch = next(job.dataset.train_iterator(0, 1, 8))  # training reads the shards
  _, metrics = job.trainer.train_step(job.trainer.init(), sharding.global_batch(batch, job.mesh))
  assert np.isfinite(float(metrics["loss"]))
  result = evaluate(job, fresh["params"], fresh["model_state"], 0, 1, 0)
  np.testing.assert_allclose(result["ppl"], 50258, rtol=1e-4)  # uniform over V: padding not counted
  eval_rows = np.stack([dataset.eval_examples[i] for i in range(result["estimator"]["sequences"])])
  assert result["estimator"]["tokens"] == int(np.sum(eval_rows != 50257)) < eval_rows.size
  wrong = prepared_config(out, "ar").data
  wrong.update(tokenizer="bpe")
  with pytest.raises(DataError, match="data.tokenizer='gpt2'"):
    build_dataset(wrong, None)


def test_text_tokenised_in_the_run_is_joined_by_eos_as_prepare_joins_it(tmp_path):
  corpus = tmp_path / "corpus"
  for directory, name, text in (("a_train", "0.txt", "First document.\n"),
                                ("a_train", "1.txt", "Second one, no newline"),
                                ("b_eval", "2.txt", "The held-out document. " * 3)):
    (corpus / directory).mkdir(parents=True, exist_ok=True)
    (corpus / directory / name).write_text(text)
  cfg = prepared_config(tmp_path, "ar").data
  cfg.update(source="text", path=str(corpus / "a_train"), eval_path=str(corpus / "b_eval"),
             seq_len=4, eval_batch_size=1)
  work = tmp_path / "work"
  in_run = build_dataset(cfg, str(work))
  gpt2 = in_run.tokenizer
  stream = np.load(work / "tokens_train.npy")
  expected = [*gpt2.encode("First document.\n"), 50256, *gpt2.encode("Second one, no newline"), 50256]
  assert stream.tolist() == expected and np.sum(stream == 50256) == 2  # one EOS after each document
  manifest = prepare(Plan(source=str(corpus), tokenizer="gpt2", seq_len=4, held_out_documents=1),
                     str(tmp_path / "prepared"), workers=1, log=lambda line: None)
  cfg.update(source="prepared", path=str(tmp_path / "prepared"), eval_path="")
  prepared = build_dataset(cfg, None)
  for split in ("train_examples", "eval_examples"):
    ours, theirs = getattr(in_run, split), getattr(prepared, split)
    assert len(ours) == len(theirs) > 0
    np.testing.assert_array_equal(np.stack(list(ours)), np.stack(list(theirs)))
  assert manifest["splits"]["eval"]["documents"] == 1
  # Characters per token count an EOS as a token with no characters, as the manifest does.
  covered = np.load(work / "tokens_eval.npy")[:len(in_run.eval_examples) * 4]
  assert 50256 in covered
  assert in_run.chars_per_token == len(gpt2.decode(covered[covered != 50256])) / len(covered)
  # A cache written before documents were joined by EOS (no tokens.json) is tokenised again.
  np.save(work / "tokens_train.npy", stream[stream != 50256])
  (work / "tokens.json").unlink()
  cfg.update(source="text", path=str(corpus / "a_train"), eval_path=str(corpus / "b_eval"))
  build_dataset(cfg, str(work))
  np.testing.assert_array_equal(np.load(work / "tokens_train.npy"), stream)
