"""Networks of the variational methods (method.md §3-4) built from the DiT pieces.

- `RecognitionModel`: r(z | x0, m), a small bidirectional transformer over the clean tokens
  that also sees which positions are masked in x_t (VADD's r_phi(z | x0, m_t); VMD's
  q_phi(z | x0, x_t), since (x0, x_t) and (x0, m_t) carry the same information).
- `LatentConditioning`: an MLP from z to the adaLN conditioning vector of the DiT.
- `VariationalDenoiser`: the DiT denoiser p(x0 | x_t, z) plus both of the above.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from ladd.models.dit import DiT, Block, TimeEmbedding, add_positions, dense, layer_norm, position_embedding


class RecognitionModel(nnx.Module):
  """Diagonal Gaussian over z from (x0, masked positions).

  The mask enters twice, as the method requires (a recognition model that ignores m_t
  collapses to the prior): a learned vector is added to the token embedding at masked
  positions, and every block's adaLN is conditioned on the masked fraction. Positions get
  the DiT's absolute position embedding (model.position_embedding), so z can say where. The
  mean-pooled output head is zero-initialised, so a fresh model returns the prior N(0, I).
  """

  def __init__(self, cfg, latent_dim, rngs):
    embedding_init = nnx.initializers.normal(0.02)
    self.embed = nnx.Embed(
        cfg.padded_vocab, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
        embedding_init=nnx.with_partitioning(embedding_init, ("vocab", "embed")), rngs=rngs)
    self.mask_state = nnx.Embed(  # row 0: position visible in x_t, row 1: masked
        2, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
        embedding_init=nnx.with_partitioning(embedding_init, ("mask_state", "embed")), rngs=rngs)
    self.mask_fraction_embed = TimeEmbedding(cfg, rngs)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.head = dense(cfg.d_model, 2 * latent_dim, ("embed", "latent"), cfg, rngs, zero=True)
    self.positions = position_embedding(cfg, rngs)

  def __call__(self, x0, masked):
    """x0 int [B, L], masked bool [B, L] -> (mean, log_var), float32 [B, latent_dim] each."""
    h = add_positions(self.embed(x0) + self.mask_state(masked.astype(jnp.int32)), self.positions)
    cond = nnx.silu(self.mask_fraction_embed(masked.mean(-1, dtype=jnp.float32)))
    positions = jnp.arange(x0.shape[1])
    for block in self.blocks:
      h = block(h, cond, positions)
    mean, log_var = jnp.split(self.head(layer_norm(h).mean(1)).astype(jnp.float32), 2, -1)
    return mean, log_var


class LatentConditioning(nnx.Module):
  """z [B, d] -> extra adaLN conditioning [B, cond_dim].

  Not zero-initialised: with the recognition head at the prior and a decoder that ignores
  z, neither side gets a gradient towards using the latent (z is pure noise to the
  decoder), a saddle that training never leaves. The DiT's zero-initialised output head
  still makes a fresh model predict uniform logits.
  """

  def __init__(self, cfg, latent_dim, rngs):
    self.fc1 = dense(latent_dim, cfg.cond_dim, ("latent", "cond"), cfg, rngs)
    self.fc2 = dense(cfg.cond_dim, cfg.cond_dim, ("cond", "cond"), cfg, rngs)

  def __call__(self, z):
    return self.fc2(nnx.silu(self.fc1(z)))


class VariationalDenoiser(nnx.Module):
  def __init__(self, cfg, recognition_cfg, latent_dim, rngs):
    self.denoiser = DiT(cfg, rngs)
    self.latent_conditioning = LatentConditioning(cfg, latent_dim, rngs)
    self.recognition = RecognitionModel(recognition_cfg, latent_dim, rngs)

  def __call__(self, x_t, t, z):
    """Logits of p(x0 | x_t, z): [B, L, padded_vocab]."""
    return self.denoiser(x_t, t, extra_cond=self.latent_conditioning(z))


def recognition_config(model_cfg, vae_cfg):
  """The denoiser's DiTConfig resized to the recognition model's width and depth."""
  return dataclasses.replace(
      model_cfg, d_model=vae_cfg.recognition_d_model, n_layers=vae_cfg.recognition_layers,
      n_heads=vae_cfg.recognition_heads)
