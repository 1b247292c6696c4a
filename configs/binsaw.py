"""Masked diffusion on binsaw (method.md §5): binary sequences whose exact density is
known, so NELBO can be compared with the true entropy (about 67.9 nats/sequence).

Variants: default (CPU, a few minutes), `:tiny` (seconds; tests).
"""

from ladd.config import default_config, make_tiny

VARIANTS = ("", "tiny")


def get_config(variant=""):
  c = default_config()
  c.data.update(source="binsaw", seq_len=128, batch_size=64, eval_batch_size=64, binsaw_saws=2, binsaw_floor=0.01)
  c.model.update(d_model=128, n_layers=4, n_heads=4, cond_dim=64, vocab_pad_multiple=8)
  c.optim.update(lr=1e-3, warmup_steps=100, ema_decay=0.99)
  c.train.update(steps=2000, log_every=100, eval_every=500, eval_batches=8, checkpoint_every=500)
  c.sample.update(steps=128, num_samples=16)
  c.eval.update(num_batches=16)
  if variant == "tiny":
    make_tiny(c)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/binsaw.py; choose tiny")
  return c
