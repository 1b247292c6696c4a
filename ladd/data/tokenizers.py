"""Character-level and byte-level BPE tokenizers, saved as one tokenizer.json.

A run's tokenizer is trained once and saved in its work directory; resuming,
sampling and evaluation load that file, so ids never change meaning mid-run.
The BPE file is a standard HuggingFace tokenizer.json; the character file is
{"kind": "char", "chars": "..."}.
"""

import json
import os
from pathlib import Path

import numpy as np
import tokenizers as hf

from ladd.data.errors import DataError

UNKNOWN_CHAR = "\ufffd"  # decoded form of <unk>: one character, so lengths still match
_BYTE_ALPHABET = 256
_LINES_PER_CHUNK = 2000  # BPE encodes chunks of lines in parallel


def _write_atomically(path: Path, text: str) -> None:
  # Several processes may share a work directory; none may see a half-written file.
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


class CharTokenizer:
  """One id per character of the training text (sorted), then <unk> for the rest."""
  kind = "char"

  def __init__(self, chars: str):
    self.chars = chars
    self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)
    self._table = np.array(list(chars) + [UNKNOWN_CHAR])
    self.vocab_size = len(chars) + 1
    self.unknown_id = len(chars)

  @classmethod
  def train(cls, text: str) -> "CharTokenizer":
    return cls("".join(sorted(set(text))))

  def encode(self, text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.searchsorted(self._codepoints, codes)
    known = self._codepoints[np.minimum(ids, len(self.chars) - 1)] == codes
    return np.where(known, ids, self.unknown_id).astype(np.int32)

  def decode(self, ids) -> str:
    return "".join(self._table[np.asarray(ids, dtype=np.int64)])

  def save(self, path) -> None:
    _write_atomically(Path(path), json.dumps({"kind": self.kind, "chars": self.chars}))


class BpeTokenizer:
  """Byte-level BPE (HuggingFace `tokenizers`): any text encodes, decoding is exact.

  Pre-tokenisation first splits after every newline, so encoding a text line-chunk
  by line-chunk (in parallel) gives exactly the ids of encoding it whole.
  """
  kind = "bpe"

  def __init__(self, tokenizer: hf.Tokenizer):
    self._tokenizer = tokenizer
    self.vocab_size = tokenizer.get_vocab_size()

  @classmethod
  def train(cls, text: str, vocab_size: int) -> "BpeTokenizer":
    if vocab_size < _BYTE_ALPHABET:
      raise DataError(f"data.bpe_vocab_size={vocab_size} is below the {_BYTE_ALPHABET}-byte"
                      " alphabet of byte-level BPE; set it to at least 256")
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.Sequence([
        hf.pre_tokenizers.Split("\n", behavior="merged_with_previous"),
        hf.pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
    return cls(tokenizer)

  def encode(self, text: str) -> np.ndarray:
    lines = text.splitlines(keepends=True)
    chunks = ["".join(lines[i:i + _LINES_PER_CHUNK])
              for i in range(0, len(lines), _LINES_PER_CHUNK)]
    encodings = self._tokenizer.encode_batch_fast(chunks, add_special_tokens=False)
    return np.concatenate([np.zeros(0, np.int32)] +
                          [np.asarray(e.ids, dtype=np.int32) for e in encodings])

  def decode(self, ids) -> str:
    return self._tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

  def save(self, path) -> None:
    _write_atomically(Path(path), self._tokenizer.to_str())


Tokenizer = CharTokenizer | BpeTokenizer


def train_tokenizer(kind: str, text: str, bpe_vocab_size: int) -> Tokenizer:
  if kind == "char":
    return CharTokenizer.train(text)
  if kind == "bpe":
    return BpeTokenizer.train(text, bpe_vocab_size)
  raise DataError(f"unknown data.tokenizer {kind!r}; use 'char' or 'bpe'")


def load_tokenizer(path) -> Tokenizer:
  """Loads a tokenizer saved by either class's `save`."""
  text = Path(path).read_text(encoding="utf-8")
  saved = json.loads(text)
  if saved.get("kind") == "char":
    return CharTokenizer(saved["chars"])
  return BpeTokenizer(hf.Tokenizer.from_str(text))
