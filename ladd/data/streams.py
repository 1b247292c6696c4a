"""Token streams on disk and the fixed-length windows the model trains on."""

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

HOLD_OUT_FRACTION = 0.05


class TokenWindows:
  """Random-access source: item i is stream[i*L : (i+1)*L] as int32; the tail
  shorter than one window is dropped."""

  def __init__(self, stream: np.ndarray, seq_len: int):
    self.stream = stream
    self.seq_len = seq_len

  def __len__(self) -> int:
    return len(self.stream) // self.seq_len

  def __getitem__(self, index: int) -> np.ndarray:
    start = int(index) * self.seq_len
    return np.asarray(self.stream[start:start + self.seq_len], dtype=np.int32)

  def covered_tokens(self) -> np.ndarray:
    """The part of the stream the windows cover (what evaluation sees)."""
    return np.asarray(self.stream[:len(self) * self.seq_len])

  def __reduce__(self):
    # Cached splits can be many GB: grain workers reopen the memory map by file
    # name instead of receiving a pickled copy of the data.
    if isinstance(self.stream, np.memmap):
      return _windows_from_npy, (self.stream.filename, self.seq_len)
    return TokenWindows, (self.stream, self.seq_len)


def _windows_from_npy(path: str, seq_len: int) -> TokenWindows:
  return TokenWindows(np.load(path, mmap_mode="r").reshape(-1), seq_len)


def held_out_count(num_examples: int) -> int:
  """How many trailing examples form the eval split when none is given."""
  return max(1, int(num_examples * HOLD_OUT_FRACTION))


def write_token_stream(path: Path, chunks: Iterable[np.ndarray]) -> None:
  """Writes int32 chunks as one 1-D .npy file without holding them all in memory.

  The header is written for length 0 and rewritten at the end: numpy pads .npy
  headers so that the length can grow in place. The file appears atomically.
  """
  header = {"descr": "<i4", "fortran_order": False, "shape": (0,)}
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    np.lib.format.write_array_header_1_0(f, header)
    data_start = f.tell()
    length = 0
    for chunk in chunks:
      chunk = np.ascontiguousarray(chunk, dtype="<i4")
      f.write(chunk.tobytes())
      length += chunk.size
    f.seek(0)
    np.lib.format.write_array_header_1_0(f, {**header, "shape": (length,)})
    if f.tell() != data_start:
      raise RuntimeError(f"npy header changed size while writing {path}")
  os.replace(tmp, path)


def join_documents(documents: list[np.ndarray], eos_id: int) -> np.ndarray:
  """One int32 stream: every document followed by EOS (also the last, so streams of
  consecutive batches of documents concatenate to the stream of all of them)."""
  return np.concatenate([np.zeros(0, np.int32)] + [
      piece for doc in documents for piece in (doc, np.array([eos_id], np.int32))]).astype(np.int32)


def pack_documents(documents: list[np.ndarray], seq_len: int,
                   eos_id: int) -> tuple[np.ndarray, int]:
  """Concatenate and wrap (OpenWebText style): the documents joined by EOS
  (join_documents), the stream cut into rows of seq_len. Returns (int32 [n, seq_len],
  tokens dropped from the tail that fills no row)."""
  stream = join_documents(documents, eos_id)
  rows = len(stream) // seq_len
  return stream[:rows * seq_len].reshape(rows, seq_len).astype(np.int32), len(stream) - rows * seq_len


def pad_documents(documents: list[np.ndarray], seq_len: int, eos_id: int,
                  pad_id: int) -> tuple[np.ndarray, int]:
  """One row per document (LM1B style): the document and EOS, cut to seq_len, then
  pad_id. Returns (int32 [len(documents), seq_len], tokens cut off long documents)."""
  rows = np.full((len(documents), seq_len), pad_id, np.int32)
  dropped = 0
  for row, doc in zip(rows, documents):
    ids = np.append(doc, eos_id)[:seq_len]
    row[:len(ids)] = ids
    dropped += len(doc) + 1 - len(ids)
  return rows, dropped
