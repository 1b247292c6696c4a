"""Masked diffusion on the embedded Shakespeare plays (character level).

Variants: `configs/shakespeare.py` (the CPU quickstart, ~10 min on 2 cores),
`:tiny` (seconds; tests), `:bpe` (BPE tokens), `:base` (768 x 12 layers x 12 heads,
L = 1024, for accelerators).
"""

from ladd.config import default_config, make_tiny

VARIANTS = ("", "tiny", "bpe", "base")


def get_config(variant=""):
  c = default_config()
  c.data.update(source="shakespeare", tokenizer="char", seq_len=128, batch_size=16, eval_batch_size=32)
  c.model.update(d_model=128, n_layers=3, n_heads=4, cond_dim=64)
  c.optim.update(lr=1e-3, warmup_steps=100, ema_decay=0.99)
  c.train.update(steps=1200, log_every=50, eval_every=400, eval_batches=8, checkpoint_every=400)
  c.sample.update(steps=128, num_samples=4)
  c.eval.update(num_batches=32)
  if variant == "tiny":
    make_tiny(c)
  elif variant == "bpe":
    c.data.update(tokenizer="bpe", bpe_vocab_size=2048)
  elif variant == "base":
    c.data.update(seq_len=1024, batch_size=256, eval_batch_size=256, tokenizer="bpe", bpe_vocab_size=8192)
    c.model.update(d_model=768, n_layers=12, n_heads=12, cond_dim=128, dtype="bfloat16")
    c.optim.update(lr=3e-4, warmup_steps=2500, ema_decay=0.9999)
    c.train.update(steps=100_000, log_every=100, eval_every=5000, checkpoint_every=5000)
    c.eval.update(num_batches=0)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/shakespeare.py; choose tiny, bpe or base")
  return c
