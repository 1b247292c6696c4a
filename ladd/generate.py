"""Drawing samples from a built job, shared by `ladd.sample` and `ladd.evaluate` (a module
without absl flags, so both entry points can import it)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ladd.diffusion import sampling


def draw_samples(job, params, model_state, settings, num_samples, batch_size, seed, clamped=None):
  """Returns (tokens [num_samples, L] numpy, what the sampler used: the method's
  `sampler_used(settings)` with the measured "nfe" (and "nfe_x", "nfe_y"), each the mean
  over batches). `clamped` [L] or [num_samples, L] (sampling.FREE where generated) fixes
  tokens in every sample."""
  graphdef, method = job.trainer.graphdef, job.method
  used = method.sampler_used(settings)
  if clamped is not None:
    clamped = np.broadcast_to(np.asarray(clamped, np.int32), (num_samples, method.seq_len))

  @jax.jit
  def draw(params, model_state, key, clamped):
    return method.sample(nnx.merge(graphdef, params, model_state), key, batch_size, settings, clamped)

  chunks, counts = [], []
  with jax.set_mesh(job.mesh):
    for i in range(-(-num_samples // batch_size)):
      rows = None
      if clamped is not None:  # the last batch repeats its final row to stay full
        rows = jnp.asarray(clamped[np.minimum(np.arange(i * batch_size, (i + 1) * batch_size), num_samples - 1)])
      tokens, info = draw(params, model_state, jax.random.fold_in(jax.random.key(seed), i), rows)
      chunks.append(np.asarray(jax.device_get(tokens)))
      counts.append({name: int(value) for name, value in info.items()})
  for name in counts[0]:
    used[name] = float(np.mean([c[name] for c in counts]))
  return np.concatenate(chunks)[:num_samples], used


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
