"""build_dataset: one Dataset from the data config, whatever the source."""

from collections.abc import Callable, Sequence
from pathlib import Path

import grain
from etils import epath

from ladd import files

from ladd.data import binsaw, sudoku, toys
from ladd.data.dataset import Dataset
from ladd.data.errors import DataError
from ladd.data.seeded import SeededSource
from ladd.data.prepare import read_manifest
from ladd.data.pretokenized import TokenRecords, array_record_windows, npy_windows
from ladd.data.shakespeare import load_shakespeare
from ladd.data.streams import TokenWindows, held_out_count
from ladd.data.text import (SPLITS, InMemoryCorpus, TextCorpus, chars_per_token,
                            read_text_path, split_off_tail, tokenise_corpus)
from ladd.data.tfds_text import TfdsCorpus, open_tfds_split
from ladd.data.tokenizers import KINDS as TOKENIZERS, load_tokenizer



def _binsaw(cfg, workdir: Path | None) -> Dataset:
  del workdir  # generated on the fly, nothing to cache
  if cfg.binsaw_saws < 1 or not 0 < cfg.binsaw_floor < 0.5:
    raise DataError(f"binsaw needs data.binsaw_saws >= 1 and 0 < data.binsaw_floor <"
                    f" 0.5, got {cfg.binsaw_saws} and {cfg.binsaw_floor}")

  exact = binsaw.BinsawDensity(cfg.seq_len, cfg.binsaw_saws, cfg.binsaw_floor)

  def split(split_id: int, num_examples: int) -> grain.MapDataset:
    return grain.MapDataset.source(SeededSource(exact.sample, cfg.shuffle_seed, split_id, num_examples))

  return Dataset(
      vocab_size=2, seq_len=cfg.seq_len,
      train_examples=split(0, binsaw.TRAIN_LENGTH),
      eval_examples=split(1, binsaw.EVAL_LENGTH),
      shuffle_seed=cfg.shuffle_seed, num_workers=cfg.num_workers,
      exact=exact,
      mask_symbol="_", id_separator="")


def _sudoku(cfg, workdir: Path | None) -> Dataset:
  del workdir  # generated on the fly, nothing to cache
  if cfg.seq_len != sudoku.CELLS or cfg.sudoku_pool < 1:
    raise DataError(f"sudoku needs data.seq_len = {sudoku.CELLS} (one token per cell) and"
                    f" data.sudoku_pool >= 1, got {cfg.seq_len} and {cfg.sudoku_pool}")

  def split(split_id: int, num_examples: int) -> grain.MapDataset:
    return grain.MapDataset.source(
        sudoku.SolutionSource(cfg.shuffle_seed, split_id, num_examples, cfg.sudoku_pool))

  return Dataset(
      vocab_size=sudoku.SIZE, seq_len=sudoku.CELLS,
      train_examples=split(0, sudoku.TRAIN_LENGTH), eval_examples=split(1, sudoku.EVAL_LENGTH),
      shuffle_seed=cfg.shuffle_seed, num_workers=cfg.num_workers,
      tokenizer=sudoku.DigitTokenizer(), mask_symbol="_")


def _text_dataset(cfg, workdir: Path | None, corpus: TextCorpus, write: bool) -> Dataset:
  tokenizer, token_streams = tokenise_corpus(cfg.tokenizer, cfg.tokenizer_path,
                                             cfg.bpe_vocab_size, workdir, corpus, write)
  windows = {split: TokenWindows(token_streams[split], cfg.seq_len) for split in SPLITS}
  _check_not_empty(len(windows["train"]), len(windows["eval"]), cfg.seq_len)
  character_level = tokenizer.kind == "char"
  return Dataset(
      vocab_size=tokenizer.vocab_size, seq_len=cfg.seq_len,
      train_examples=grain.MapDataset.source(windows["train"]),
      eval_examples=grain.MapDataset.source(windows["eval"]),
      shuffle_seed=cfg.shuffle_seed, num_workers=cfg.num_workers, tokenizer=tokenizer,
      chars_per_token=chars_per_token(tokenizer, windows["eval"].covered_tokens()),
      is_character_level=character_level,
      mask_symbol="_" if character_level else "[MASK]")


def _shakespeare(cfg, workdir: Path | None, write: bool) -> Dataset:
  train, held_out = load_shakespeare(cfg.eval_plays)
  return _text_dataset(cfg, workdir, InMemoryCorpus(tuple(train), tuple(held_out)), write)


def _text(cfg, workdir: Path | None, write: bool) -> Dataset:
  """One document per .txt file (as ladd.prepare's default)."""
  documents = read_text_path(cfg.path)
  if cfg.eval_path:
    train, held_out = documents, read_text_path(cfg.eval_path)
  else:
    train, held_out = split_off_tail(documents)
  corpus = InMemoryCorpus(tuple(train), tuple(held_out))
  return _text_dataset(cfg, workdir, corpus, write)


def _tfds(cfg, workdir: Path | None, write: bool) -> Dataset:
  if not cfg.tfds_name:
    raise DataError("data.source='tfds' needs data.tfds_name (e.g. 'lm1b')")
  splits = {
      "train": open_tfds_split(cfg.tfds_name, cfg.tfds_train_split, cfg.tfds_data_dir),
      "eval": open_tfds_split(cfg.tfds_name, cfg.tfds_eval_split, cfg.tfds_data_dir),
  }
  return _text_dataset(cfg, workdir, TfdsCorpus(splits, cfg.tfds_text_key), write)


def _pretokenized_dataset(cfg, open_split: Callable[[str], Sequence]) -> Dataset:
  if cfg.vocab_size <= 0:
    raise DataError(f"data.source={cfg.source!r} holds token ids: set data.vocab_size"
                    " to the number of distinct ids (> 0)")
  train = grain.MapDataset.source(open_split(cfg.path))
  if cfg.eval_path:
    eval_ = grain.MapDataset.source(open_split(cfg.eval_path))
  else:
    cut = len(train) - held_out_count(len(train))
    train, eval_ = train[:cut], train[cut:]
  _check_not_empty(len(train), len(eval_), cfg.seq_len)
  return Dataset(vocab_size=cfg.vocab_size, seq_len=cfg.seq_len, train_examples=train,
                 eval_examples=eval_, shuffle_seed=cfg.shuffle_seed,
                 num_workers=cfg.num_workers)


def _npy(cfg, workdir: Path | None) -> Dataset:
  del workdir  # already tokenised, nothing to cache
  return _pretokenized_dataset(
      cfg, lambda path: npy_windows(path, cfg.seq_len, cfg.vocab_size))


def _prepared(cfg, workdir: Path | None) -> Dataset:
  """Shards written by `python -m ladd.prepare --output=DIR` (data.path=DIR): no
  tokenising, the manifest says what the ids mean."""
  del workdir  # the tokenizer lives beside the shards
  manifest = read_manifest(cfg.path)
  tokenizer_kind = manifest["tokenizer"]["kind"]
  if cfg.tokenizer != tokenizer_kind:
    raise DataError(f"{cfg.path} holds {tokenizer_kind!r} tokens but data.tokenizer="
                    f"{cfg.tokenizer!r}; set data.tokenizer={tokenizer_kind!r}")
  if cfg.seq_len != manifest["seq_len"]:
    raise DataError(f"{cfg.path} holds sequences of {manifest['seq_len']} tokens but"
                    f" data.seq_len={cfg.seq_len}; make them agree")
  vocab_size = manifest["vocab_size"]
  if cfg.vocab_size and cfg.vocab_size != vocab_size:
    raise DataError(f"{cfg.path} holds {vocab_size} token ids but data.vocab_size="
                    f"{cfg.vocab_size}; set it to {vocab_size} or 0")
  splits = {split: TokenRecords(grain.sources.ArrayRecordDataSource(files.local_copies(
      [epath.Path(cfg.path) / f for f in manifest["splits"][split]["files"]])), cfg.seq_len, vocab_size)
      for split in SPLITS}
  for split in SPLITS:
    if len(splits[split]) != manifest["splits"][split]["sequences"]:
      raise DataError(f"the {split} shards in {cfg.path} hold {len(splits[split])} sequences,"
                      f" the manifest {manifest['splits'][split]['sequences']}; prepare again")
  _check_not_empty(len(splits["train"]), len(splits["eval"]), cfg.seq_len)
  held_out = manifest["splits"]["eval"]
  return Dataset(
      vocab_size=vocab_size, seq_len=cfg.seq_len,
      train_examples=grain.MapDataset.source(splits["train"]),
      eval_examples=grain.MapDataset.source(splits["eval"]),
      shuffle_seed=cfg.shuffle_seed, num_workers=cfg.num_workers,
      tokenizer=load_tokenizer(epath.Path(cfg.path) / manifest["tokenizer"]["file"]),
      chars_per_token=held_out["characters"] / held_out["encoded_tokens"],
      mask_symbol="[MASK]", pad_id=manifest["pad_id"])


def _array_record(cfg, workdir: Path | None) -> Dataset:
  del workdir  # already tokenised, nothing to cache
  return _pretokenized_dataset(
      cfg, lambda pattern: array_record_windows(pattern, cfg.seq_len, cfg.vocab_size))


_BUILDERS = {
    "shakespeare": _shakespeare, "binsaw": _binsaw, "sudoku": _sudoku, "text": _text, "npy": _npy,
    "array_record": _array_record, "tfds": _tfds, "prepared": _prepared,
    **{name: toys.toy_dataset for name in toys.TOYS},
}
_TEXT_SOURCES = ("shakespeare", "text", "tfds")  # they cache a tokenizer and token streams in the work directory


def _check_config(cfg) -> None:
  if cfg.source not in _BUILDERS:
    raise DataError(f"unknown data.source {cfg.source!r}; use one of"
                    f" {', '.join(_BUILDERS)}")
  if cfg.source in _TEXT_SOURCES and cfg.tokenizer not in TOKENIZERS:
    raise DataError(f"unknown data.tokenizer {cfg.tokenizer!r}; use one of"
                    f" {', '.join(TOKENIZERS)}")
  for key in ("seq_len", "batch_size", "eval_batch_size"):
    if cfg[key] < 1:
      raise DataError(f"data.{key} must be at least 1, got {cfg[key]}")
  for key in ("shuffle_seed", "num_workers"):
    if cfg[key] < 0:
      raise DataError(f"data.{key} must be >= 0, got {cfg[key]}")


def _check_not_empty(train_examples: int, eval_examples: int, seq_len: int) -> None:
  for split, count in (("train", train_examples), ("eval", eval_examples)):
    if count == 0:
      raise DataError(f"the {split} split holds no complete window of data.seq_len="
                      f"{seq_len} tokens; lower seq_len or add data")


def build_dataset(data_cfg, workdir: str | None, write: bool = True) -> Dataset:
  """The Dataset for data_cfg. Text sources keep their tokenizer and token streams
  in workdir (a local one is created if missing; any etils.epath location) and reuse
  them on later calls; None trains in memory. With write=False (every process but the
  main one) they only read it: what it lacks is computed in memory."""
  _check_config(data_cfg)
  if workdir and files.is_local(workdir) and write:
    Path(workdir).mkdir(parents=True, exist_ok=True)
  cache = epath.Path(workdir) if workdir else None
  if data_cfg.source in _TEXT_SOURCES:
    dataset = _BUILDERS[data_cfg.source](data_cfg, cache, write)
  else:
    dataset = _BUILDERS[data_cfg.source](data_cfg, cache)
  if len(dataset.eval_examples) < data_cfg.eval_batch_size:
    raise DataError(f"the held-out split has {len(dataset.eval_examples)} examples,"
                    f" fewer than one eval batch (data.eval_batch_size="
                    f"{data_cfg.eval_batch_size}); lower it or hold out more data")
  return dataset
