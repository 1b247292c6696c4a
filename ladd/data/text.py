"""Text corpora to a tokenizer and train/eval token streams, cached in the work dir.

Files in the work directory:
  tokenizer.json    trained (or built / loaded from data.tokenizer_path) on the
                    first run, loaded on every later one;
  tokens_train.npy  the tokenised splits; reused only together with the saved
  tokens_eval.npy   tokenizer they were made with, recomputed when missing.
A work directory therefore belongs to one data configuration: change the data
(source, paths, eval_plays, tokenizer) and use a fresh one.
"""

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from ladd import files
from ladd.data import streams
from ladd.data.errors import DataError
from ladd.data.tokenizers import Tokenizer, load_tokenizer, make_tokenizer

TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "eval")


class TextCorpus(Protocol):

  def tokenizer_text(self) -> str:
    """The text the tokenizer is trained on."""

  def chunks(self, split: str) -> Iterable[str]:
    """The split's text in order, in pieces small enough to tokenise one at a time."""


@dataclasses.dataclass(frozen=True)
class InMemoryCorpus:
  train: str
  eval: str

  def __post_init__(self):
    for split in SPLITS:
      if not getattr(self, split):
        raise DataError(f"the {split} text is empty; check data.path / data.eval_path"
                        " / data.eval_plays")

  def tokenizer_text(self) -> str:
    return self.train

  def chunks(self, split: str) -> Iterable[str]:
    return [getattr(self, split)]


def read_text_path(path: str) -> str:
  """A .txt file, or every .txt file under a directory (sorted, joined by newlines)."""
  root = Path(path)
  files = sorted(root.rglob("*.txt")) if path and root.is_dir() else [root]
  if not path or not root.exists() or not files:
    raise DataError(f"no text found at data.path={path!r}; give a .txt file or a"
                    " directory containing .txt files")
  return "\n".join(f.read_text(encoding="utf-8") for f in files)


def split_off_tail(text: str) -> tuple[str, str]:
  """(first 95%, last 5%) of the characters: the default held-out split."""
  cut = len(text) - int(len(text) * streams.HOLD_OUT_FRACTION)
  return text[:cut], text[cut:]


def _load_or_train_tokenizer(kind: str, tokenizer_path: str, bpe_vocab_size: int,
                             workdir: Path | None, corpus: TextCorpus, write: bool) -> tuple[Tokenizer, bool]:
  """The tokenizer, and whether it came from the work directory."""
  path = workdir / TOKENIZER_FILE if workdir else None
  if path and path.exists():
    tokenizer = load_tokenizer(path)
    if tokenizer.kind != kind:
      raise DataError(f"{path} holds a {tokenizer.kind!r} tokenizer but data.tokenizer="
                      f"{kind!r}; use a fresh workdir or set data.tokenizer="
                      f"{tokenizer.kind!r}")
    return tokenizer, True
  tokenizer = make_tokenizer(kind, tokenizer_path, bpe_vocab_size, corpus.tokenizer_text)
  if path and write:
    tokenizer.save(path)
  return tokenizer, False


def _encode_chunks(tokenizer: Tokenizer, corpus: TextCorpus,
                   split: str) -> Iterable[np.ndarray]:
  # A generator: the corpus is read only if the cache has to be (re)built.
  for chunk in corpus.chunks(split):
    yield tokenizer.encode(chunk)


def _token_stream(tokenizer: Tokenizer, corpus: TextCorpus, split: str,
                  workdir: Path | None, cache_valid: bool, write: bool) -> np.ndarray:
  encoded = _encode_chunks(tokenizer, corpus, split)
  path = workdir / f"tokens_{split}.npy" if workdir else None
  if path and cache_valid and path.exists():
    return files.load_npy(path)
  if path and write and files.is_local(path):
    streams.write_token_stream(path, encoded)  # in pieces, never all in memory
    return files.load_npy(path)
  stream = np.concatenate([np.zeros(0, np.int32), *encoded])
  if path and write:
    files.save_npy(path, stream)
  return stream


def tokenise_corpus(kind: str, tokenizer_path: str, bpe_vocab_size: int, workdir: Path | None,
                    corpus: TextCorpus, write: bool = True) -> tuple[Tokenizer, dict[str, np.ndarray]]:
  """The tokenizer and each split's token stream, from the cache when possible; the
  cache is written only with `write`."""
  tokenizer, loaded = _load_or_train_tokenizer(kind, tokenizer_path, bpe_vocab_size, workdir,
                                               corpus, write)
  token_streams = {split: _token_stream(tokenizer, corpus, split, workdir, loaded, write)
                   for split in SPLITS}
  return tokenizer, token_streams


def chars_per_token(tokenizer: Tokenizer, tokens: np.ndarray) -> float:
  """Characters per token of `tokens`, to turn nats per token into bits per char."""
  return len(tokenizer.decode(tokens)) / len(tokens)
