"""Data for ladd: `build_dataset(data_cfg, workdir)` returns a `Dataset` of clean
int32 token windows (train iterator, held-out batches, decoding, exact density
for binsaw). Bad input raises `DataError`, a ValueError with a one-line fix."""

from ladd.data.build import build_dataset
from ladd.data.dataset import Dataset
from ladd.data.errors import DataError
from ladd.data.tokenizers import load_tokenizer

__all__ = ["DataError", "Dataset", "build_dataset", "load_tokenizer"]
