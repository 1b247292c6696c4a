"""LADD networks (method.md §2): the latent encoder, the joint two-stream denoiser, the
small latent denoiser g_psi of the sequential schedule, and the EMA VQ codebook.

Everything is built from the DiT pieces in ladd.models.dit, so logical axis names,
adaLN-zero initialisation and RoPE behave exactly as in the MDLM backbone.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ladd.diffusion import vq
from ladd.models.dit import (
    Attention, Block, DiTConfig, Mlp, Modulation, OutputHead, TimeEmbedding, add_positions, attend,
    dense, embedding, layer_norm, make_blocks, modulate, position_embedding, run_blocks)
from ladd.sharding import constrain_batch


@dataclasses.dataclass(frozen=True)
class LatentSpec:
  kind: str  # "co" (Gaussian latent) or "di" (VQ codes)
  sequential: bool  # builds g_psi for the Co sequential schedule
  slots: int = 1
  dim: int = 32
  encoder_layers: int = 1
  encoder_d_model: int = 64
  encoder_heads: int = 2
  standardize: bool = True
  sigma0_mode: str = "none"
  sigma0: float = 0.1
  denoiser_layers: int = 2
  denoiser_d_model: int = 64
  denoiser_heads: int = 2
  codebook_size: int = 32
  condition_ty: bool = True


def resized(cfg, d_model, n_layers, n_heads):
  return dataclasses.replace(cfg, d_model=d_model, n_layers=n_layers, n_heads=n_heads)


class LatentInput(nnx.Module):
  """The latent input embedding d -> 4h -> h."""

  def __init__(self, dim, cfg, rngs):
    self.fc1 = dense(dim, 4 * cfg.d_model, ("latent", "mlp"), cfg, rngs)
    self.fc2 = dense(4 * cfg.d_model, cfg.d_model, ("mlp", "embed"), cfg, rngs)

  def __call__(self, y):
    return self.fc2(jax.nn.silu(self.fc1(y.astype(self.fc1.kernel.dtype))))


class Encoder(nnx.Module):
  """Bidirectional transformer over x0 with S' learned query slots appended after the
  tokens (choice: query slots rather than the last S' token positions, so every token
  position stays a token and S' is free); the slots' outputs give z [B, S', dim].

  Blocks are unconditioned: their adaLN modulation sees a zero vector, so only its bias
  (a learned constant affine) acts. Tokens also get a learned absolute position embedding:
  with RoPE alone a fresh slot's near-uniform attention sees only how many tokens of each
  kind there are, not where they are, and "where" is what a latent must carry (binsaw's phase).
  (It has it whatever model.position_embedding says: the switch keeps the token denoiser
  importable as MDLM's DiT, and the encoder has no counterpart there.)
  """

  def __init__(self, token_cfg, spec, rngs):
    cfg = resized(token_cfg, spec.encoder_d_model, spec.encoder_layers, spec.encoder_heads)
    self.cfg = cfg
    self.embed = embedding(cfg.padded_vocab, cfg.d_model, ("vocab", "embed"), cfg, rngs)
    self.positions = embedding(cfg.seq_len, cfg.d_model, ("position", "embed"), cfg, rngs)
    self.queries = embedding(spec.slots, cfg.d_model, ("latent", "embed"), cfg, rngs)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    for block in self.blocks:
      # adaLN-zero gates with a constant (zero) condition would stay shut: the slots would
      # never read x0 and the latent collapses to a constant. Open them at init instead.
      bias, d = block.modulation.proj.bias, cfg.d_model
      bias[...] = bias[...].at[2 * d:3 * d].set(1.0).at[5 * d:6 * d].set(1.0)
    self.out = dense(cfg.d_model, spec.dim, ("embed", "latent"), cfg, rngs)
    # At init the slots average ~L token embeddings, so every sequence gets nearly the same z,
    # although z does carry x0's structure in its small spread.
    # Amplified to unit variance per dimension that spread is usable from the first steps
    # (binsaw co_seq, README "latent check": 23.1 nats of latent information at step 600
    # with it, 9.1 without).
    self.standardize = (nnx.BatchNorm(spec.dim, use_bias=False, use_scale=False, momentum=0.9, rngs=rngs)
                        if spec.standardize else None)
    if spec.sigma0_mode == "learned":
      self.log_sigma0 = nnx.Param(jnp.log(jnp.full((), spec.sigma0, jnp.float32)))

  def __call__(self, x0, corrupt=None, update_statistics=False):
    """x0 int [B, L]; `corrupt` bool [B, L] zeroes those positions' input embeddings.
    With `update_statistics` the standardisation uses (and absorbs) this batch's statistics,
    otherwise its running averages, so z is a function of x0 alone."""
    h = add_positions(self.embed(x0), self.positions)
    if corrupt is not None:
      h = jnp.where(corrupt[..., None], 0.0, h).astype(h.dtype)
    batch, slots = x0.shape[0], self.queries.embedding.shape[0]
    queries = jnp.broadcast_to(self.queries(jnp.arange(slots)), (batch, slots, h.shape[-1]))
    h = constrain_batch(jnp.concatenate([h, queries.astype(h.dtype)], axis=1))
    positions = jnp.arange(h.shape[1])
    cond = jnp.zeros((batch, self.cfg.cond_dim), h.dtype)
    for block in self.blocks:
      h = block(h, cond, positions)
    z = self.out(layer_norm(h[:, -slots:])).astype(jnp.float32)
    if self.standardize is not None:
      z = self.standardize(z, use_running_average=not update_statistics)
    return z


class Stream(nnx.Module):
  """One MM-DiT stream's own LayerNorm modulation, QKV/output projections and MLP."""

  def __init__(self, cfg, rngs):
    self.modulation = Modulation(cfg, 6, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp = Mlp(cfg, rngs)

  def qkv(self, h, mods, positions):
    shift, scale = mods[0], mods[1]
    return self.attn.project(modulate(layer_norm(h), shift, scale), positions)

  def update(self, h, attended, mods):
    gate1, shift2, scale2, gate2 = mods[2:]
    h = h + gate1[:, None, :] * self.attn.out(attended)
    return h + gate2[:, None, :] * self.mlp(modulate(layer_norm(h), shift2, scale2))


class JointBlock(nnx.Module):
  """Token and latent streams with ONE self-attention over their concatenation."""

  def __init__(self, cfg, rngs):
    self.attention_impl = cfg.attention_impl
    self.tokens = Stream(cfg, rngs)
    self.latent = Stream(cfg, rngs)

  def __call__(self, hx, hy, cond, positions):
    length = hx.shape[1]
    mods_x, mods_y = self.tokens.modulation(cond), self.latent.modulation(cond)
    qx, kx, vx = self.tokens.qkv(hx, mods_x, positions[:length])
    qy, ky, vy = self.latent.qkv(hy, mods_y, positions[length:])
    joined = [jnp.concatenate(pair, axis=1) for pair in ((qx, qy), (kx, ky), (vx, vy))]
    attended = attend(*joined, self.attention_impl)
    return (self.tokens.update(hx, attended[:, :length], mods_x),
            self.latent.update(hy, attended[:, length:], mods_y))


class JointDenoiser(nnx.Module):
  """MM-DiT over [x_t ; y_t]: token logits (SUBS applied by the caller) and a latent head:
  y0-hat [B, S', d] for Co-LADD, code logits [B, S', K + 1] (id K = MASK) for Di-LADD.

  The latent enters as vectors through `LatentInput`; Di-LADD passes the (straight-through)
  code vectors and `latent_masked`, which replaces masked slots by a learned vector.
  RoPE positions of the latent slots continue after the L token positions; the token
  stream also gets the DiT's absolute position embedding (model.position_embedding).
  """

  def __init__(self, cfg: DiTConfig, spec: LatentSpec, rngs):
    self.cfg = cfg
    self.embed = embedding(cfg.padded_vocab, cfg.d_model, ("vocab", "embed"), cfg, rngs)
    self.latent_in = LatentInput(spec.dim, cfg, rngs)
    self.time_x = TimeEmbedding(cfg, rngs) if cfg.time_conditioning else None
    self.time_y = TimeEmbedding(cfg, rngs) if spec.condition_ty else None
    self.blocks = make_blocks(lambda r: JointBlock(cfg, r), cfg, rngs)
    self.token_head = OutputHead(cfg, cfg.padded_vocab, ("embed", "vocab"), rngs)
    if spec.kind == "co":
      self.latent_head = OutputHead(cfg, spec.dim, ("embed", "latent"), rngs)
      self.mask_vector = None
    else:
      self.latent_head = OutputHead(cfg, spec.codebook_size + 1, ("embed", "codes"), rngs)
      self.mask_vector = embedding(1, cfg.d_model, ("codes", "embed"), cfg, rngs)
    self.positions = position_embedding(cfg, rngs)

  def condition(self, t_x, t_y):
    """SiLU(emb(t_x) + emb(t_y)) with either term switched off by config."""
    cond = jnp.zeros((t_x.shape[0], self.cfg.cond_dim), self.cfg.compute_dtype)
    if self.time_x is not None:
      cond = cond + self.time_x(t_x)
    if self.time_y is not None:
      cond = cond + self.time_y(t_y)
    return jax.nn.silu(cond)

  def __call__(self, x_t, y, t_x, t_y, latent_masked=None):
    cond = self.condition(t_x, t_y)
    hx = constrain_batch(add_positions(self.embed(x_t), self.positions))
    hy = self.latent_in(y)
    if latent_masked is not None:
      hy = jnp.where(latent_masked[..., None], self.mask_vector.embedding[0].astype(hy.dtype), hy)
    positions = jnp.arange(x_t.shape[1] + y.shape[1])
    def body(block, carry):
      hx, hy = block(*carry, cond, positions)
      return constrain_batch(hx), hy
    hx, hy = run_blocks(self.blocks, (hx, hy), body, self.cfg)
    return self.token_head(hx, cond), self.latent_head(hy, cond).astype(jnp.float32)


class LatentDenoiser(nnx.Module):
  """g_psi(y_t, t) -> y0-hat: a small time-conditioned transformer over the S' slots."""

  def __init__(self, token_cfg, spec, rngs):
    cfg = resized(token_cfg, spec.denoiser_d_model, spec.denoiser_layers, spec.denoiser_heads)
    self.latent_in = LatentInput(spec.dim, cfg, rngs)
    self.time = TimeEmbedding(cfg, rngs)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.head = OutputHead(cfg, spec.dim, ("embed", "latent"), rngs)

  def __call__(self, y_t, t):
    cond = jax.nn.silu(self.time(t))
    h = self.latent_in(y_t)
    positions = jnp.arange(y_t.shape[1])
    for block in self.blocks:
      h = block(h, cond, positions)
    return self.head(h, cond).astype(jnp.float32)


class CodebookStatistic(nnx.Variable):
  """EMA codebook statistics: updated in the forward pass, never by the optimiser (the
  trainer carries every non-Param variable as model_state)."""


class Quantizer(nnx.Module):
  def __init__(self, spec, rngs, decay):
    self.decay = decay
    self.counts = CodebookStatistic(jnp.ones((spec.codebook_size,), jnp.float32))
    self.sums = CodebookStatistic(jax.random.normal(rngs.params(), (spec.codebook_size, spec.dim), jnp.float32))

  @property
  def codebook(self):
    return vq.codebook_from_ema(self.counts[...], self.sums[...])

  def __call__(self, z_e, update):
    """(ids [B, S'], z_q [B, S', D]); with `update` the EMA statistics absorb this batch."""
    ids, z_q = vq.nearest_code(z_e, self.codebook)
    if update:
      counts, sums = vq.ema_update(self.counts[...], self.sums[...], z_e, ids, self.decay)
      counts, sums = vq.restart_dead_codes(counts, sums, z_e)
      self.counts[...], self.sums[...] = counts, sums
    return ids, z_q


class LaddModel(nnx.Module):
  def __init__(self, cfg: DiTConfig, spec: LatentSpec, rngs, codebook_decay=0.99):
    self.encoder = Encoder(cfg, spec, rngs)
    self.denoiser = JointDenoiser(cfg, spec, rngs)
    self.latent_denoiser = LatentDenoiser(cfg, spec, rngs) if spec.kind == "co" and spec.sequential else None
    self.quantizer = Quantizer(spec, rngs, codebook_decay) if spec.kind == "di" else None
