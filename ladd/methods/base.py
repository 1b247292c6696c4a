"""The interface every diffusion method implements; the trainer, the entry points and
ladd.generate use nothing else, so a new method plugs in by name in ladd.methods."""

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import jax

from ladd.diffusion.sampling import SamplerSettings


@runtime_checkable
class Method(Protocol):
  name: str
  vocab_size: int  # real symbols V; MASK is id V
  mask_id: int
  seq_len: int
  has_nstep_bound: bool  # whether nstep_nelbo bounds -log p(x0) (no: a deterministic continuous latent)

  @property
  def quantities(self) -> Mapping[str, str]:
    """What each nelbo() output is: "bound", "objective" or "diagnostic" (ladd.summary)."""

  @property
  def lr_scales(self) -> Mapping[str, float]:
    """Learning-rate multipliers of named top-level submodules (usually empty)."""

  @property
  def flops_per_token(self) -> float:
    """Training FLOPs per token (forward + backward) for MFU."""

  def init_model(self, rngs) -> Any:
    """A fresh nnx model."""

  def loss(self, model, x0: jax.Array, key: jax.Array, step) -> tuple[jax.Array, dict]:
    """(scalar training loss, metrics) for clean sequences x0 [B, L]."""

  def nelbo(self, model, x0: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    """Per-sequence terms [B] in nats; "nelbo" is their total."""

  def nstep_nelbo(self, model, x0: jax.Array, key: jax.Array, steps: int,
                  latent_steps: int = 0) -> dict[str, jax.Array]:
    """The N-step sampler's own bound per sequence [B] in nats ("nelbo"; method.md §7)."""

  def sample(self, model, key: jax.Array, num_samples: int, settings: SamplerSettings,
             clamped: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(tokens [N, L], {"nfe": calls, ...}); jit-able. `clamped` (int, broadcastable to
    [N, L], sampling.FREE at generated positions) gives tokens that are never changed."""

  def sampler_used(self, settings: SamplerSettings) -> dict:
    """What `sample` runs with `settings` (steps, N_x, N_y, sampler, final fill, noise...),
    recorded with every sample; raises ValueError for settings this method cannot use."""

  def latent_steps(self, settings: SamplerSettings) -> int | None:
    """N_y, the latent channel's own steps, or None without a diffused latent."""

  def describe(self) -> dict:
    """What the method is (name, mask_schedule, latent_schedule, dims...), for records."""
