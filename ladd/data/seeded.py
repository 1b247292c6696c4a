"""Random-access sources for generated data (binsaw, toys)."""

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class SeededSource:
  """Example i comes from its own seeded stream, so any index is reproducible without
  generating the ones before it (grain shuffles and shards by index)."""
  draw: Callable[[np.random.Generator, int], np.ndarray]  # (rng, n) -> int32 [n, L]
  seed: int
  split_id: int  # 0 train, 1 eval: distinct random streams
  num_examples: int

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> np.ndarray:
    return self.draw(np.random.default_rng([self.seed, self.split_id, int(index)]), 1)[0]
