"""Bidirectional DiT backbone: adaLN-zero conditioning, RoPE, zero-initialised head, and
(`position_embedding="learned"`, the default) a learned absolute position embedding added
to the token embedding. RoPE alone cannot tell positions apart when every input is MASK:
all values are equal, so every output is too, and a one-step sample has one marginal at
every position. `position_embedding="none"` is MDLM's RoPE-only DiT, parameter for parameter.
With `causal=True` attention is causal (the autoregressive method), and `DiT.decode` runs
the network one position at a time from a key/value cache (its sampler).

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `vocab`, `cond`, `position`);
ladd.sharding maps them onto the mesh. The pieces (`Attention`, `Mlp`, `Modulation`,
`apply_rope`, `TimeEmbedding`) are separate so that latent methods can build a second
stream or extra conditioning from them; `DiT.forward_hidden` exposes the trunk.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ladd.sharding import constrain_batch

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
POSITION_EMBEDDINGS = ("learned", "none")
# What a rematerialised block keeps for the backward pass: nothing (recompute everything),
# or the matmul outputs (recompute only the cheap elementwise work).
REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "dots_saveable": jax.checkpoint_policies.dots_saveable}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  vocab_size: int  # real symbols V; id V is MASK
  seq_len: int
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  mlp_ratio: int = 4
  cond_dim: int = 128
  time_conditioning: bool = False  # MDLM: off (the mask fraction reveals t); MD4: on
  dtype: str = "float32"  # compute dtype; parameters are always float32
  remat: str = "none"  # none | full | dots_saveable (jax.checkpoint policy of each block)
  scan_layers: bool = False  # blocks stacked on a leading "layers" axis under one nnx.scan
  attention_impl: str = "xla"  # "xla" or "cudnn" (jax.nn.dot_product_attention)
  vocab_pad_multiple: int = 128  # embedding rows rounded up so the vocab axis shards
  position_embedding: str = "learned"  # "learned" (absolute, added to the input) | "none" (RoPE only)
  causal: bool = False  # position i attends to positions <= i only (the autoregressive method)

  def __post_init__(self):
    if self.d_model % self.n_heads:
      raise ValueError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
    if (self.d_model // self.n_heads) % 2:
      raise ValueError("model.d_model / model.n_heads must be even for rotary embeddings")
    if self.dtype not in DTYPES:
      raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
    if isinstance(self.remat, bool) or self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat must be one of {sorted(REMAT_POLICIES)} (formerly a bool: True is 'full', "
                       f"False is 'none'), got {self.remat!r}")
    if self.attention_impl not in ("xla", "cudnn"):
      raise ValueError(f"model.attention_impl must be 'xla' or 'cudnn', got {self.attention_impl!r}")
    if self.position_embedding not in POSITION_EMBEDDINGS:
      raise ValueError(f"model.position_embedding must be one of {POSITION_EMBEDDINGS}, got {self.position_embedding!r}")

  @property
  def mask_id(self):
    return self.vocab_size

  @property
  def padded_vocab(self):
    m = self.vocab_pad_multiple
    return -(-(self.vocab_size + 1) // m) * m

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]


def dense(d_in, d_out, axes, cfg, rngs, zero=False, use_bias=True):
  init = nnx.initializers.zeros_init() if zero else nnx.initializers.xavier_uniform()
  return nnx.Linear(
      d_in, d_out, use_bias=use_bias, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
      kernel_init=nnx.with_partitioning(init, axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), axes[1:]),
      rngs=rngs)


def embedding(num, features, axes, cfg, rngs):
  return nnx.Embed(num, features, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                   embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), axes),
                   rngs=rngs)


def position_embedding(cfg, rngs):
  """The learned absolute position table [seq_len, d_model], or None (RoPE only)."""
  if cfg.position_embedding == "none":
    return None
  return embedding(cfg.seq_len, cfg.d_model, ("position", "embed"), cfg, rngs)


def add_positions(h, table, positions=None):
  """h [B, T, d] plus a position table's rows at integer `positions` [T] (default: the
  first T rows; table None: h unchanged)."""
  if table is None:
    return h
  rows = table.embedding[:h.shape[1]] if positions is None else table.embedding[positions]
  return h + rows[None].astype(h.dtype)


def layer_norm(x, eps=1e-6):
  """Affine-free LayerNorm in float32: the affine part comes from adaLN modulation."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x, shift, scale):
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


def apply_rope(x, positions, base=10000.0):
  """Rotary embedding on [B, T, H, Dh] with integer positions [T]."""
  half = x.shape[-1] // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]
  cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


class TimeEmbedding(nnx.Module):
  """Sinusoidal features of t in [0, 1] followed by an MLP to cond_dim."""

  def __init__(self, cfg, rngs, freq_dim=256):
    self.freq_dim = freq_dim
    self.fc1 = dense(freq_dim, cfg.cond_dim, ("freq", "cond"), cfg, rngs)
    self.fc2 = dense(cfg.cond_dim, cfg.cond_dim, ("cond", "cond"), cfg, rngs)

  def __call__(self, t):
    half = self.freq_dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None, :]
    features = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], -1)
    return self.fc2(jax.nn.silu(self.fc1(features)))


class Modulation(nnx.Module):
  """adaLN-zero: cond -> n chunks of width d, zero-initialised so blocks start as identity."""

  def __init__(self, cfg, n_chunks, rngs):
    self.n_chunks = n_chunks
    self.proj = dense(cfg.cond_dim, n_chunks * cfg.d_model, ("cond", "embed"), cfg, rngs, zero=True)

  def __call__(self, cond):
    return jnp.split(self.proj(cond), self.n_chunks, axis=-1)


class Mlp(nnx.Module):
  def __init__(self, cfg, rngs):
    hidden = cfg.mlp_ratio * cfg.d_model
    self.fc1 = dense(cfg.d_model, hidden, ("embed", "mlp"), cfg, rngs)
    self.fc2 = dense(hidden, cfg.d_model, ("mlp", "embed"), cfg, rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class Attention(nnx.Module):
  """Projections of one stream; `attend` runs bidirectional attention over any streams."""

  def __init__(self, cfg, rngs):
    self.n_heads = cfg.n_heads
    self.head_dim = cfg.d_model // cfg.n_heads
    self.qkv = dense(cfg.d_model, 3 * cfg.d_model, ("embed", "heads"), cfg, rngs)
    self.out = dense(cfg.d_model, cfg.d_model, ("heads", "embed"), cfg, rngs)

  def project(self, x, positions):
    b, t, _ = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * self.n_heads, self.head_dim), 3, axis=2)
    return apply_rope(q, positions), apply_rope(k, positions), v


def attend(q, k, v, implementation, causal=False, mask=None):
  out = jax.nn.dot_product_attention(q, k, v, is_causal=causal, mask=mask,
                                     implementation=None if implementation == "xla" else implementation)
  return out.reshape(out.shape[:2] + (-1,))


class Block(nnx.Module):
  def __init__(self, cfg, rngs):
    self.attention_impl = cfg.attention_impl
    self.causal = cfg.causal
    self.modulation = Modulation(cfg, 6, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp = Mlp(cfg, rngs)

  def __call__(self, x, cond, positions, cache=None):
    """x [B, T, d] at integer positions [T] -> x. With `cache` (keys, values [B, L, H, Dh]
    of a causal block's earlier positions), x is the one position positions[0], which
    attends to them and to itself: returns (x, the cache holding its key and value)."""
    shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)
    q, k, v = self.attn.project(modulate(layer_norm(x), shift1, scale1), positions)
    if cache is None:
      attended = attend(q, k, v, self.attention_impl, self.causal)
    else:
      cache = tuple(jax.lax.dynamic_update_slice_in_dim(old, new.astype(old.dtype), positions[0], axis=1)
                    for old, new in zip(cache, (k, v)))
      readable = jnp.arange(cache[0].shape[1]) <= positions[0]
      attended = attend(q, *cache, "xla", mask=readable[None, None, None, :])
    x = x + gate1[:, None, :] * self.attn.out(attended)
    x = x + gate2[:, None, :] * self.mlp(modulate(layer_norm(x), shift2, scale2))
    return x if cache is None else (x, cache)


class OutputHead(nnx.Module):
  """Final adaLN and a zero-initialised projection: a fresh model predicts uniform logits."""

  def __init__(self, cfg, d_out, axes, rngs):
    self.modulation = Modulation(cfg, 2, rngs)
    self.proj = dense(cfg.d_model, d_out, axes, cfg, rngs, zero=True)

  def __call__(self, x, cond):
    shift, scale = self.modulation(cond)
    return self.proj(modulate(layer_norm(x), shift, scale))


def make_blocks(make_block, cfg, rngs):
  """cfg.n_layers blocks: an nnx.List, or with cfg.scan_layers one module whose parameters
  are stacked on a leading `layers` axis (for `run_blocks`' nnx.scan)."""
  if not cfg.scan_layers:
    return nnx.List([make_block(rngs) for _ in range(cfg.n_layers)])

  @nnx.split_rngs(splits=cfg.n_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def stacked(rngs):
    return make_block(rngs)
  return stacked(rngs)


def run_blocks(blocks, carry, body, cfg):
  """carry -> body(block, carry) through every block in order, each under cfg.remat's
  checkpoint policy: a Python loop, or one nnx.scan (one compiled layer) over stacked blocks."""
  if cfg.remat != "none":
    body = nnx.remat(body, policy=REMAT_POLICIES[cfg.remat])
  if cfg.scan_layers:
    scanned = nnx.scan(lambda c, block: body(block, c), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
                       transform_metadata={nnx.PARTITION_NAME: "layers"})
    return scanned(carry, blocks)
  for block in blocks:
    carry = body(block, carry)
  return carry


class DiT(nnx.Module):
  def __init__(self, cfg: DiTConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = embedding(cfg.padded_vocab, cfg.d_model, ("vocab", "embed"), cfg, rngs)
    self.time_embed = TimeEmbedding(cfg, rngs)
    self.blocks = make_blocks(lambda r: Block(cfg, r), cfg, rngs)
    self.head = OutputHead(cfg, cfg.padded_vocab, ("embed", "vocab"), rngs)
    # Drawn last, so every other parameter is initialised as in the RoPE-only DiT.
    self.positions = position_embedding(cfg, rngs)

  def condition(self, t, extra_cond=None):
    """SiLU(emb(t) + extra_cond); with time conditioning off the network sees t = 0.

    `extra_cond` [B, cond_dim] is how latent-variable methods feed a global latent
    through adaLN.
    """
    cond = self.time_embed(t if self.cfg.time_conditioning else jnp.zeros_like(t))
    if extra_cond is not None:
      cond = cond + extra_cond
    return jax.nn.silu(cond)

  def forward_hidden(self, h, cond, positions):
    return run_blocks(self.blocks, h, lambda block, h: constrain_batch(block(h, cond, positions)), self.cfg)

  def __call__(self, x_t, t, extra_cond=None):
    """x_t int [B, L], t float [B] -> logits [B, L, padded_vocab] (compute dtype)."""
    cond = self.condition(t, extra_cond)
    positions = jnp.arange(x_t.shape[1])
    h = self.forward_hidden(constrain_batch(add_positions(self.embed(x_t), self.positions)), cond, positions)
    return self.head(h, cond)

  def init_cache(self, batch):
    """Keys and values for `decode`: two zero arrays [n_layers, batch, L, H, Dh]."""
    cfg = self.cfg
    zeros = jnp.zeros((cfg.n_layers, batch, cfg.seq_len, cfg.n_heads, cfg.d_model // cfg.n_heads),
                      cfg.compute_dtype)
    return zeros, zeros

  def decode(self, token, position, cache):
    """The causal network at one position: token int [B] at `position` (a scalar), reading
    the keys and values `cache` holds for the positions before -> (logits [B,
    padded_vocab], the cache with this position's). Feeding positions 0, 1, ... in turn
    gives __call__'s logits with t = 0, position by position, at O(L) cost each."""
    if not self.cfg.causal:
      raise ValueError("decode runs a causal network position by position; this DiT is bidirectional")
    cond = self.condition(jnp.zeros(token.shape, jnp.float32))
    positions = jnp.reshape(position, (1,))
    h = add_positions(self.embed(token[:, None]), self.positions, positions)
    if self.cfg.scan_layers:
      # jax.lax.scan over the stacked parameters, not nnx.scan: samplers call decode inside
      # a jax loop, where an nnx transform cannot take modules from the enclosing trace.
      graphdef, stacked = nnx.split(self.blocks)

      def layer(h, inputs):
        params, keys, values = inputs
        return nnx.merge(graphdef, params)(h, cond, positions, (keys, values))
      h, cache = jax.lax.scan(layer, h, (stacked, *cache))
    else:
      keys, values = cache
      for i, block in enumerate(self.blocks):
        h, (layer_keys, layer_values) = block(h, cond, positions, (keys[i], values[i]))
        keys, values = keys.at[i].set(layer_keys), values.at[i].set(layer_values)
      cache = keys, values
    return self.head(h, cond)[:, 0], cache


def count_params(state):
  return sum(x.size for x in jax.tree.leaves(state))


def train_flops_per_token(cfg: DiTConfig, seq_len: int):
  """Forward + backward FLOPs per token: 6 x matmul params + attention scores (PaLM appendix B)."""
  d, hidden = cfg.d_model, cfg.mlp_ratio * cfg.d_model
  per_layer = 3 * d * d + d * d + 2 * d * hidden
  matmul_params = cfg.n_layers * per_layer + d * cfg.padded_vocab
  return 6 * matmul_params + 12 * cfg.n_layers * seq_len * d
