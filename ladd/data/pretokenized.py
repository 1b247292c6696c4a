"""Data that is already token ids: .npy arrays and ArrayRecord files.

npy: a 1-D token stream (cut into windows of seq_len) or a 2-D [N, seq_len] array,
memory-mapped. array_record: each record is one window, int32 ids as raw bytes
(np.ndarray.tobytes()). Ids must lie in [0, data.vocab_size).
"""

import dataclasses
import glob
from pathlib import Path

import grain
import numpy as np

from ladd.data.errors import DataError
from ladd.data.streams import TokenWindows


def _check_ids(ids: np.ndarray, vocab_size: int, where: str) -> None:
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    raise DataError(f"{where} holds token ids in [{ids.min()}, {ids.max()}], outside"
                    f" [0, data.vocab_size={vocab_size}); fix the data or vocab_size")


def npy_windows(path: str, seq_len: int, vocab_size: int) -> TokenWindows:
  if not path or not Path(path).is_file():
    raise DataError(f"no .npy file at {path!r}; set data.path (and data.eval_path)")
  try:
    array = np.load(path, mmap_mode="r")
  except ValueError as error:
    raise DataError(f"cannot read {path} as a .npy array ({error})") from None
  if (not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.integer)
      or array.ndim not in (1, 2)):
    raise DataError(f"{path} does not hold integer token ids as a 1-D [tokens] or"
                    " 2-D [N, seq_len] .npy array")
  if array.ndim == 2 and array.shape[1] != seq_len:
    raise DataError(f"{path} holds windows of length {array.shape[1]} but"
                    f" data.seq_len={seq_len}; make them agree")
  _check_ids(array, vocab_size, path)
  return TokenWindows(array.reshape(-1), seq_len)


@dataclasses.dataclass(frozen=True)
class TokenRecords:
  """Random-access source over ArrayRecord files of int32 windows, checked on read."""
  records: grain.sources.ArrayRecordDataSource
  seq_len: int
  vocab_size: int

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> np.ndarray:
    ids = np.frombuffer(self.records[index], dtype=np.int32)
    if ids.shape != (self.seq_len,):
      raise DataError(f"ArrayRecord record {index} has {ids.size} int32 tokens but"
                      f" data.seq_len={self.seq_len}; make them agree")
    _check_ids(ids, self.vocab_size, f"ArrayRecord record {index}")
    return ids


def array_record_windows(pattern: str, seq_len: int, vocab_size: int) -> TokenRecords:
  paths = sorted(glob.glob(pattern)) if pattern else []
  if not paths:
    raise DataError(f"no ArrayRecord files match {pattern!r}; set data.path"
                    " (and data.eval_path) to a glob of .array_record files")
  source = TokenRecords(grain.sources.ArrayRecordDataSource(paths), seq_len, vocab_size)
  if len(source):
    source[0]  # a wrong seq_len or dtype fails here, not hours into training
  return source
