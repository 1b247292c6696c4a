"""Drawing samples from a built job, shared by `ladd.sample` and `ladd.evaluate` (a module
without absl flags, so both entry points can import it)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ladd.diffusion import sampling
from ladd.metrics import progress


@functools.lru_cache(maxsize=16)
def compiled_sampler(graphdef, method, settings, batch_size):
  """One jitted sampler per (model, method, settings, batch): block-wise generation and
  repeated evaluation calls reuse it instead of compiling again."""
  return jax.jit(lambda params, model_state, key, clamped: method.sample(
      nnx.merge(graphdef, params, model_state), key, batch_size, settings, clamped))


def draw_samples(job, params, model_state, settings, num_samples, batch_size, seed, clamped=None,
                 first_batch=0):
  """Returns (tokens [num_samples, L] numpy, what the sampler used: the method's
  `sampler_used(settings)` with the measured "nfe" (and "nfe_x", "nfe_y"), each the mean
  over batches). `clamped` [L] or [num_samples, L] (sampling.FREE where generated) fixes
  tokens in every sample. Batch i draws with key fold_in(key(seed), first_batch + i), so
  later blocks of a long sample pass first_batch past the batches already used."""
  method = job.method
  used = method.sampler_used(settings)
  draw = compiled_sampler(job.trainer.graphdef, method, settings, batch_size)
  if clamped is not None:
    clamped = np.broadcast_to(np.asarray(clamped, np.int32), (num_samples, method.seq_len))
  chunks, counts = [], []
  with jax.set_mesh(job.mesh):
    num_batches = -(-num_samples // batch_size)
    for i in progress(range(num_batches), num_batches, "sampling batches"):
      rows = None
      if clamped is not None:  # the last batch repeats its final row to stay full
        rows = jnp.asarray(clamped[np.minimum(np.arange(i * batch_size, (i + 1) * batch_size), num_samples - 1)])
      tokens, info = draw(params, model_state, jax.random.fold_in(jax.random.key(seed), first_batch + i), rows)
      chunks.append(np.asarray(jax.device_get(tokens)))
      counts.append({name: int(value) for name, value in info.items()})
  for name in counts[0]:
    used[name] = float(np.mean([c[name] for c in counts]))
  return np.concatenate(chunks)[:num_samples], used


def blockwise(draw_block, first, length, keep, eos_id=None):
  """Semi-autoregressive generation of `length` tokens with a model of block length L.

  `draw_block(clamped [N, L], block_index) -> tokens [N, L]` generates one block; the
  first block is clamped by `first` [N, L]; every later block starts with the last `keep`
  tokens so far clamped as its prefix and adds L - keep new tokens. Generation stops early
  once every row holds `eos_id`. Returns a list of N 1-D arrays, each cut after its first
  `eos_id` (when given) and to `length`.
  """
  seq_len = first.shape[1]
  if not 0 <= keep < seq_len:
    raise ValueError(f"--block_keep must be in [0, {seq_len}) to leave new tokens per block, got {keep}")
  rows = draw_block(first, 0)
  block = 1
  while rows.shape[1] < length and not (eos_id is not None and (rows == eos_id).any(1).all()):
    clamped = np.full(first.shape, sampling.FREE, np.int32)
    clamped[:, :keep] = rows[:, rows.shape[1] - keep:]
    rows = np.concatenate([rows, draw_block(clamped, block)[:, keep:]], axis=1)
    block += 1
  out = []
  for row in rows[:, :length]:
    if eos_id is not None and (row == eos_id).any():
      row = row[:np.argmax(row == eos_id) + 1]
    out.append(row)
  return out


def draw_long(job, params, model_state, settings, num_samples, batch_size, seed, clamped, length, keep):
  """`draw_samples` for `length` tokens per sample, block-wise (`blockwise`) beyond the
  model's sequence length; the tokenizer's `eos_id`, where it has one, ends a sample.
  Returns (list of 1-D token arrays, what the sampler used, with NFE counts summed over the
  blocks and "blocks"; "length" and "block_keep" too when there was more than one)."""
  if length < 1:
    raise ValueError(f"--length must be >= 1, got {length}")
  seq_len = job.method.seq_len
  first = np.broadcast_to(np.asarray(sampling.FREE if clamped is None else clamped, np.int32),
                          (num_samples, seq_len))
  batches = -(-num_samples // batch_size)
  per_block = []

  def draw_block(clamped_rows, block):
    tokens, used = draw_samples(job, params, model_state, settings, num_samples, batch_size, seed,
                                None if clamped is None and block == 0 else clamped_rows,
                                first_batch=block * batches)
    per_block.append(used)
    return tokens

  tokens = blockwise(draw_block, np.array(first), length, keep,
                     getattr(job.dataset.tokenizer, "eos_id", None))
  used = dict(per_block[0], blocks=len(per_block))
  used.update({name: sum(u[name] for u in per_block) for name in used if name.startswith("nfe")})
  if len(per_block) > 1:
    used.update(length=length, block_keep=keep)
  return tokens, used


def sample(job, params, model_state, settings, num_samples, batch_size, seed):
  """Returns (tokens [num_samples, L] numpy, mean NFE per batch), unconditionally."""
  tokens, used = draw_samples(job, params, model_state, settings, num_samples, batch_size, seed)
  return tokens, used["nfe"]


def clamped_from_text(dataset, prompt="", suffix="", infill=""):
  """int32 [L]: the token each position is clamped to, sampling.FREE where generated.

  `prompt` is laid out from position 0 and `suffix` so that it ends the sequence. An
  `infill` template replaces the prompt: it is laid out from position 0 and every "_"
  in it is one generated token (a run "____" is a gap of four; with BPE the text between
  gaps is encoded piece by piece). Positions after the prompt or template are generated
  too. Raises ValueError for text the tokenizer cannot encode, a template without a
  gap, or more clamped tokens than the sequence holds.
  """
  seq_len = dataset.seq_len
  if prompt and infill:
    raise ValueError("give --prompt or --infill, not both (a template starts with its own prefix)")
  if (prompt or suffix or infill) and dataset.tokenizer is None:
    raise ValueError("this data source has no tokenizer, so text cannot be clamped")

  def encode(text, what):
    ids = np.asarray(dataset.tokenizer.encode(text), np.int32)
    unknown = getattr(dataset.tokenizer, "unknown_id", None)
    if unknown is not None and (ids == unknown).any():
      bad = sorted({c for c, i in zip(text, ids) if i == unknown})
      raise ValueError(f"the {what} holds {', '.join(map(repr, bad))}, outside the tokenizer's alphabet")
    return ids

  head = np.zeros(0, np.int32)
  if infill:
    pieces = [piece for piece in re.split(r"(_+)", infill) if piece]
    if not any(piece.startswith("_") for piece in pieces):
      raise ValueError("the --infill template has no gap: mark each token to generate with '_'")
    head = np.concatenate([np.full(len(piece), sampling.FREE, np.int32) if piece.startswith("_")
                           else encode(piece, "--infill template") for piece in pieces])
  elif prompt:
    head = encode(prompt, "--prompt")
  tail = encode(suffix, "--suffix") if suffix else np.zeros(0, np.int32)
  if len(head) + len(tail) > seq_len:
    raise ValueError(f"the prompt or template ({len(head)} tokens) and the suffix ({len(tail)} tokens)"
                     f" do not fit in the sequence of {seq_len} tokens")
  clamped = np.full(seq_len, sampling.FREE, np.int32)
  clamped[:len(head)] = head
  clamped[seq_len - len(tail):] = tail
  if (prompt or suffix or infill) and not (clamped == sampling.FREE).any():
    raise ValueError("the clamped text fills the whole sequence: nothing is left to generate")
  return clamped
