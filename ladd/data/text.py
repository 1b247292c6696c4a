"""Text corpora to a tokenizer and train/eval token streams, cached in the work dir.

A corpus is a sequence of documents (what a document is: see each corpus). A split's
stream is its documents in order, each followed by the tokenizer's end-of-text id
where it has one (GPT-2's 50256, or a tokenizers JSON file holding <|endoftext|>),
exactly as `ladd.prepare` joins them (streams.join_documents); a tokenizer without one
(char, a BPE trained here) gets a newline after each document instead.

Files in the work directory:
  tokenizer.json    trained (or built / loaded from data.tokenizer_path) on the
                    first run, loaded on every later one;
  tokens_train.npy  the tokenised splits; reused only together with the saved
  tokens_eval.npy   tokenizer they were made with and a tokens.json that records
  tokens.json       how documents were joined (STREAM_FORMAT), recomputed otherwise.
A work directory therefore belongs to one data configuration: change the data
(source, paths, eval_plays, tokenizer) and use a fresh one.
"""

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
from etils import epath

from ladd import files
from ladd.data import streams
from ladd.data.errors import DataError
from ladd.data.tokenizers import Tokenizer, load_tokenizer, make_tokenizer

TOKENIZER_FILE = "tokenizer.json"
STREAM_FILE = "tokens.json"
# How the cached streams join documents; caches written another way (before version 2,
# documents were concatenated with no end-of-text id) are tokenised again.
STREAM_FORMAT = 2
SPLITS = ("train", "eval")


class TextCorpus(Protocol):

  def tokenizer_text(self) -> str:
    """The text the tokenizer is trained on."""

  def documents(self, split: str) -> Iterable[list[str]]:
    """The split's documents in order, in batches small enough to tokenise at once."""


@dataclasses.dataclass(frozen=True)
class InMemoryCorpus:
  train: tuple[str, ...]
  eval: tuple[str, ...]

  def __post_init__(self):
    for split in SPLITS:
      if not any(getattr(self, split)):
        raise DataError(f"the {split} text is empty; check data.path / data.eval_path"
                        " / data.eval_plays")

  def tokenizer_text(self) -> str:
    return "\n".join(self.train)

  def documents(self, split: str) -> Iterable[list[str]]:
    return [list(getattr(self, split))]


def read_text_path(path: str) -> list[str]:
  """The documents at path (local or any etils.epath URL): a .txt file, or every .txt file
  under a directory (sorted), one document per file (as `ladd.prepare --documents=file`)."""
  root = epath.Path(path) if path else None
  if root and root.is_dir():
    texts = [f for f in files.files_under(root) if f.name.endswith(".txt")]
  else:
    texts = [root] if root and root.exists() else []
  if not texts:
    raise DataError(f"no text found at data.path={path!r}; give a .txt file or a"
                    " directory containing .txt files")
  return [f.read_text(encoding="utf-8") for f in texts]


def split_off_tail(documents: list[str]) -> tuple[list[str], list[str]]:
  """(first 95%, last 5%) of the characters: the default held-out split. The document
  the cut falls in is cut in two: its head ends the train split, its rest starts the
  held-out one."""
  total = sum(len(doc) for doc in documents)
  cut = total - int(total * streams.HOLD_OUT_FRACTION)
  seen = 0
  for i, doc in enumerate(documents):
    if seen + len(doc) >= cut:
      head, rest = doc[:cut - seen], doc[cut - seen:]
      return ([*documents[:i], head] if head else documents[:i],
              [rest, *documents[i + 1:]] if rest else documents[i + 1:])
    seen += len(doc)
  return documents, []


def separated_documents(tokenizer: Tokenizer, documents: list[str]) -> list[str]:
  """The texts document_stream encodes: a newline ends each document where the
  tokenizer has no end-of-text id."""
  return documents if tokenizer.eos_id is not None else [doc + "\n" for doc in documents]


def document_stream(tokenizer: Tokenizer, documents: list[str]) -> np.ndarray:
  """The documents' int32 ids, each document followed by the tokenizer's end-of-text id
  (as ladd.prepare joins them) or, for a tokenizer without one, by a newline."""
  encoded = tokenizer.encode_documents(separated_documents(tokenizer, documents))
  if tokenizer.eos_id is None:
    return np.concatenate([np.zeros(0, np.int32)] + encoded)
  return streams.join_documents(encoded, tokenizer.eos_id)


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


def _encode_documents(tokenizer: Tokenizer, corpus: TextCorpus,
                      split: str) -> Iterable[np.ndarray]:
  # A generator: the corpus is read only if the cache has to be (re)built.
  for documents in corpus.documents(split):
    yield document_stream(tokenizer, documents)


def _stream_stamp(tokenizer: Tokenizer) -> dict:
  return {"format": STREAM_FORMAT, "eos_id": tokenizer.eos_id}


def _cached_stamp(workdir: Path) -> dict | None:
  path = workdir / STREAM_FILE
  return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _write_stamp(workdir: Path, stamp: dict) -> None:
  files.write_text(workdir / STREAM_FILE, json.dumps(stamp))


def _token_stream(tokenizer: Tokenizer, corpus: TextCorpus, split: str,
                  workdir: Path | None, cache_valid: bool, write: bool) -> np.ndarray:
  encoded = _encode_documents(tokenizer, corpus, split)
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
  stamp = _stream_stamp(tokenizer)
  cache_valid = loaded and _cached_stamp(workdir) == stamp
  token_streams = {split: _token_stream(tokenizer, corpus, split, workdir, cache_valid, write)
                   for split in SPLITS}
  if workdir and write and not cache_valid:
    _write_stamp(workdir, stamp)  # last: the streams it describes are in place
  return tokenizer, token_streams


def chars_per_token(tokenizer: Tokenizer, tokens: np.ndarray) -> float:
  """Characters per token of `tokens`, to turn nats per token into bits per char;
  end-of-text separators count as tokens with no characters (as in ladd.prepare's
  manifest)."""
  tokens = np.asarray(tokens)
  text = tokens if tokenizer.eos_id is None else tokens[tokens != tokenizer.eos_id]
  return len(tokenizer.decode(text)) / len(tokens)
