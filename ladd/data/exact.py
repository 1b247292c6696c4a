"""What a source whose distribution is known exactly offers (Dataset.exact): binsaw's
density (ladd.data.binsaw) and the toys' joint tables (ladd.data.toys)."""

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ExactDistribution(Protocol):
  # The exact sample metrics it supports (ladd.exact_metrics: "js", "kl", "tv"); each needs
  # `probs`. Empty where the table does not fit in memory (binsaw has 2^L sequences).
  metrics: tuple[str, ...]
  probs: np.ndarray | None  # float64 [V] * L, sums to 1; None without a table

  def log_prob(self, x: np.ndarray) -> np.ndarray:
    """Exact log p(x) in nats for int x [n, L]."""

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """n independent draws from the generative process, int32 [n, L]."""

  def entropy(self) -> float:
    """H(p) in nats per sequence (exact, or a Monte-Carlo mean of -log p where stated)."""
