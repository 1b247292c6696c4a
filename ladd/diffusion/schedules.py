"""Noise schedules for the masking process.

`alpha(t)` is the probability that a token is still unmasked at time t; t = 0 is clean
data, t = 1 is all masks. Every schedule is clamped to [eps, 1 - eps] so the NELBO
weight -alpha'(t) / (1 - alpha(t)) stays finite at both ends.
"""

import dataclasses

import jax.numpy as jnp

SCHEDULES = ("linear", "cosine", "polynomial")


@dataclasses.dataclass(frozen=True)
class Schedule:
  kind: str = "linear"
  eps: float = 1e-4
  power: float = 2.0  # only for "polynomial": alpha = 1 - t^power

  def __post_init__(self):
    if self.kind not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.kind!r}; choose one of {SCHEDULES}")

  def _unclamped(self, t):
    if self.kind == "linear":
      return 1.0 - t
    if self.kind == "cosine":
      return 1.0 - jnp.cos(jnp.pi / 2 * (1.0 - t))
    return 1.0 - t**self.power

  def _unclamped_derivative(self, t):
    if self.kind == "linear":
      return -jnp.ones_like(t)
    if self.kind == "cosine":
      return -jnp.pi / 2 * jnp.sin(jnp.pi / 2 * (1.0 - t))
    return -self.power * t ** (self.power - 1.0)

  def alpha(self, t):
    return (1.0 - 2 * self.eps) * self._unclamped(t) + self.eps

  def alpha_derivative(self, t):
    return (1.0 - 2 * self.eps) * self._unclamped_derivative(t)

  def nelbo_weight(self, t):
    """w(t) = -alpha'(t) / (1 - alpha(t)), the continuous-time NELBO weight."""
    return -self.alpha_derivative(t) / (1.0 - self.alpha(t))
