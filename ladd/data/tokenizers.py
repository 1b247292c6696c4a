"""Character-level, byte-level BPE and GPT-2 tokenizers, saved as one tokenizer.json.

A run's tokenizer is trained (or built, or loaded from data.tokenizer_path) once and
saved in its work directory; resuming, sampling and evaluation load that file, so ids
never change meaning mid-run. The BPE file is a standard HuggingFace tokenizer.json;
the character file is {"kind": "char", "chars": "..."}; the GPT-2 file is
{"kind": "gpt2"}, as the exact GPT-2 vocabulary ships inside this package
(assets/gpt2.tiktoken, see assets/README.md).
"""

import base64
import functools
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import tokenizers as hf
from etils import epath

from ladd import files
from ladd.data.errors import DataError

UNKNOWN_CHAR = "\ufffd"  # decoded form of <unk>: one character, so lengths still match
_BYTE_ALPHABET = 256
_LINES_PER_CHUNK = 2000  # BPE encodes chunks of lines in parallel
GPT2_ASSET = Path(__file__).parent / "assets" / "gpt2.tiktoken"
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_EOS = "<|endoftext|>"
GPT2_EOS_ID = 50256
# Where GPT-2's pre-tokenizer regex always cuts: between "X\n" and "Y" with X, Y not
# whitespace (every piece holding X ends at X; "\n" is a piece of its own; matching is
# forward-only), so encoding the pieces separately gives exactly the ids of the whole.
_GPT2_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


class CharTokenizer:
  """One id per character of the training text (sorted), then <unk> for the rest."""
  kind = "char"

  def __init__(self, chars: str):
    self.chars = chars
    self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)
    self._table = np.array(list(chars) + [UNKNOWN_CHAR])
    self.vocab_size = len(chars) + 1
    self.unknown_id = len(chars)
    self.eos_id = None  # documents are joined by newlines

  @classmethod
  def train(cls, text: str) -> "CharTokenizer":
    return cls("".join(sorted(set(text))))

  def encode(self, text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.searchsorted(self._codepoints, codes)
    known = self._codepoints[np.minimum(ids, len(self.chars) - 1)] == codes
    return np.where(known, ids, self.unknown_id).astype(np.int32)

  def encode_documents(self, documents: list[str]) -> list[np.ndarray]:
    return [self.encode(doc) for doc in documents]

  def decode(self, ids) -> str:
    return "".join(self._table[np.asarray(ids, dtype=np.int64)])

  def save(self, path) -> None:
    files.write_text(path, json.dumps({"kind": self.kind, "chars": self.chars}))


def _splits_after_newlines(tokenizer: hf.Tokenizer) -> bool:
  """Whether pre-tokenisation first cuts after every newline (BpeTokenizer.train's)."""
  pre = json.loads(tokenizer.to_str()).get("pre_tokenizer") or {}
  first = (pre.get("pretokenizers") or [{}])[0]
  return (first.get("type") == "Split" and first.get("pattern") == {"String": "\n"}
          and first.get("behavior") == "MergedWithPrevious")


def _line_chunks(text: str) -> list[str]:
  lines = text.splitlines(keepends=True)
  return ["".join(lines[i:i + _LINES_PER_CHUNK]) for i in range(0, len(lines), _LINES_PER_CHUNK)]


def _gpt2_chunks(text: str) -> list[str]:
  pieces = _GPT2_SAFE_CUT.split(text)
  return ["".join(pieces[i:i + _LINES_PER_CHUNK]) for i in range(0, len(pieces), _LINES_PER_CHUNK)]


def _whole(text: str) -> list[str]:
  return [text]


class BpeTokenizer:
  """Byte-level BPE (HuggingFace `tokenizers`): any text encodes, decoding is exact.

  Long texts are encoded in chunks in parallel, cut only where the pre-tokenizer
  always cuts (after every newline for the trained BPE, `_GPT2_SAFE_CUT` for GPT-2),
  so the ids equal those of encoding the text whole; a tokenizer loaded from a file
  whose pre-tokenizer is unknown encodes each text whole.
  """
  kind = "bpe"

  def __init__(self, tokenizer: hf.Tokenizer, chunk=None):
    self._tokenizer = tokenizer
    self._chunk = chunk or (_line_chunks if _splits_after_newlines(tokenizer) else _whole)
    self.vocab_size = tokenizer.get_vocab_size()
    # Documents are separated by this id where the vocabulary has GPT-2's end-of-text token.
    self.eos_id = tokenizer.token_to_id(GPT2_EOS)

  @classmethod
  def from_file(cls, path) -> "BpeTokenizer":
    """Any HuggingFace `tokenizers` JSON file (data.tokenizer_path)."""
    try:
      return cls(hf.Tokenizer.from_file(str(path)))
    except Exception as error:  # tokenizers raises a bare Exception on a bad file
      raise DataError(f"cannot load a tokenizers JSON file from data.tokenizer_path="
                      f"{str(path)!r} ({str(error).splitlines()[0] if str(error) else error})"
                      ) from None

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
    return self.encode_documents([text])[0]

  def encode_documents(self, documents: list[str]) -> list[np.ndarray]:
    """Each document's ids; all chunks of all documents are encoded in parallel."""
    chunked = [self._chunk(doc) for doc in documents]
    encodings = iter(self._tokenizer.encode_batch_fast(
        [chunk for chunks in chunked for chunk in chunks], add_special_tokens=False))
    return [np.concatenate([np.zeros(0, np.int32)] + [
        np.asarray(next(encodings).ids, dtype=np.int32) for _ in chunks]) for chunks in chunked]

  def decode(self, ids) -> str:
    return self._tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

  def save(self, path) -> None:
    files.write_text(path, self._tokenizer.to_str())


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's printable stand-in character for each byte (byte-level BPE's alphabet)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable},
          **{b: chr(256 + i) for i, b in enumerate(others)}}


def read_tiktoken_ranks(path) -> dict[bytes, int]:
  """A tiktoken BPE file: one `base64(token) rank` line per token."""
  ranks = {}
  for line in Path(path).read_text(encoding="ascii").splitlines():
    if line:
      token, rank = line.split()
      ranks[base64.b64decode(token)] = int(rank)
  return ranks


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
  """BPE merges equivalent to tiktoken's rule (merge the adjacent pair whose union has
  the lowest rank): every split of a token into two tokens, ordered by the token's rank."""
  merges = []
  for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
    splits = [(token[:i], token[i:]) for i in range(1, len(token))
              if token[:i] in ranks and token[i:] in ranks]
    merges += sorted(splits, key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
  return merges


class Gpt2Tokenizer(BpeTokenizer):
  """The exact GPT-2 BPE (50257 ids, <|endoftext|> = 50256), built from the shipped ranks.

  <|endoftext|> is an ordinary vocabulary entry that no merge produces, so text that
  spells it out encodes as ordinary tokens (tiktoken's disallowed_special=()), and only
  document separators put in by the data pipeline are id 50256.
  """
  kind = "gpt2"

  def __init__(self):
    super().__init__(_gpt2_hf_tokenizer(), chunk=_gpt2_chunks)

  def save(self, path) -> None:
    files.write_text(path, json.dumps({"kind": self.kind, "sha256": GPT2_SHA256}))


@functools.cache
def _gpt2_hf_tokenizer() -> hf.Tokenizer:
  data = GPT2_ASSET.read_bytes()
  if hashlib.sha256(data).hexdigest() != GPT2_SHA256:
    raise DataError(f"{GPT2_ASSET} is not the GPT-2 vocabulary this package shipped"
                    " (sha256 differs); reinstall ladd")
  ranks = read_tiktoken_ranks(GPT2_ASSET)
  to_text = bytes_to_unicode()

  def text(token: bytes) -> str:
    return "".join(to_text[b] for b in token)

  vocab = {text(token): rank for token, rank in ranks.items()}
  vocab[GPT2_EOS] = GPT2_EOS_ID
  merges = [(text(a), text(b)) for a, b in merges_from_ranks(ranks)]
  tokenizer = hf.Tokenizer(hf.models.BPE(vocab=vocab, merges=merges))
  tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tokenizer.decoder = hf.decoders.ByteLevel()
  return tokenizer


Tokenizer = CharTokenizer | BpeTokenizer
KINDS = ("char", "bpe", "gpt2")


def make_tokenizer(kind: str, tokenizer_path: str, bpe_vocab_size: int,
                   training_text) -> Tokenizer:
  """The tokenizer for data.tokenizer / data.tokenizer_path; `training_text()` gives the
  text to train on and is called only when training is needed."""
  if tokenizer_path:
    if kind != "bpe":
      raise DataError(f"data.tokenizer_path loads a tokenizers JSON file: set"
                      f" data.tokenizer='bpe' (got {kind!r})")
    return BpeTokenizer.from_file(tokenizer_path)
  if kind == "char":
    return CharTokenizer.train(training_text())
  if kind == "bpe":
    return BpeTokenizer.train(training_text(), bpe_vocab_size)
  if kind == "gpt2":
    return Gpt2Tokenizer()
  raise DataError(f"unknown data.tokenizer {kind!r}; use one of {', '.join(KINDS)}")


def load_tokenizer(path) -> Tokenizer:
  """Loads a tokenizer saved by any class's `save`."""
  text = epath.Path(path).read_text(encoding="utf-8")
  saved = json.loads(text)
  if saved.get("kind") == "char":
    return CharTokenizer(saved["chars"])
  if saved.get("kind") == "gpt2":
    return Gpt2Tokenizer()
  return BpeTokenizer(hf.Tokenizer.from_str(text))
