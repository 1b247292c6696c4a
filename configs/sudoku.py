"""Sudoku (ladd.data.sudoku): 81 tokens per board, trained on complete solutions; at
sampling the clues of a puzzle are clamped and the blanks generated.

Variants: mdlm, vmd, vadd, co_ladd, di_ladd (LADD with the sequential schedule, the
latent drawn first), each CPU-sized or with `_tiny` (seconds; tests),
e.g. `--config=configs/sudoku.py:vmd_tiny`.
"""

from configs import ladd_binsaw
from ladd.config import default_config, make_tiny

METHODS = ("mdlm", "vmd", "vadd", "co_ladd", "di_ladd")
VARIANTS = tuple(m + size for m in METHODS for size in ("", "_tiny"))


def get_config(variant="mdlm"):
  method = variant.removesuffix("_tiny")
  if method not in METHODS:
    raise ValueError(f"unknown variant {variant!r} of configs/sudoku.py; choose one of"
                     f" {', '.join(VARIANTS)}")
  tiny = variant.endswith("_tiny")
  c = default_config()
  c.data.update(source="sudoku", seq_len=81, batch_size=64, eval_batch_size=64)
  c.model.update(d_model=128, n_layers=4, n_heads=4, cond_dim=64, vocab_pad_multiple=8)
  c.optim.update(lr=1e-3, warmup_steps=200, ema_decay=0.999)
  c.train.update(steps=5000, log_every=100, eval_every=1000, eval_batches=4, checkpoint_every=1000)
  c.sample.update(steps=20, num_samples=16)
  c.eval.update(num_batches=8)
  c.vae.update(latent_dim=8, kl_anneal_steps=1000)
  if method in ("co_ladd", "di_ladd"):
    schedule = "co_seq" if method == "co_ladd" else "di_seq"
    ladd_binsaw.apply_ladd(c, schedule + ("_tiny" if tiny else ""), "sudoku")
  else:
    c.method = method
  if tiny:
    make_tiny(c)
    c.data.update(seq_len=81, sudoku_pool=8)
    c.vae.update(latent_dim=4, recognition_d_model=32, kl_anneal_steps=2)
  return c
