"""Toys with an exact joint (method.md §5) for every method: 2D toys scored by Jensen-Shannon
divergence, dependency tasks by KL and total variation, at few sampling steps.

Variant "METHOD,TASK[,tiny]", e.g. `--config=configs/toys.py:vadd,checkerboard`;
METHOD is any registered method (mdlm, vadd, vmd, co_ladd, di_ladd), TASK one of
checkerboard, swiss_roll, circles, copy, parity, mixture, product. Default: CPU-sized (about a
minute); `tiny`: seconds (tests).
"""

from ladd.config import default_config

TASK_DATA = {
    "checkerboard": dict(seq_len=2), "swiss_roll": dict(seq_len=2), "circles": dict(seq_len=2),
    "copy": dict(seq_len=2), "parity": dict(seq_len=4), "mixture": dict(seq_len=4, toy_vocab=4),
    "product": dict(seq_len=4, toy_vocab=4),
}

VARIANTS = tuple(f"{method},{task}" for method in ("mdlm", "vadd", "vmd", "co_ladd", "di_ladd") for task in TASK_DATA)


def get_config(variant="mdlm,checkerboard"):
  parts = variant.split(",")
  if len(parts) not in (2, 3) or parts[1] not in TASK_DATA or parts[2:] not in ([], ["tiny"]):
    raise ValueError(f"configs/toys.py variant must be METHOD,TASK[,tiny] with TASK one of"
                     f" {sorted(TASK_DATA)}, got {variant!r}")
  method, task = parts[:2]
  c = default_config()
  c.method = method
  c.data.update(source=task, batch_size=128, eval_batch_size=128, **TASK_DATA[task])
  c.model.update(d_model=64, n_layers=2, n_heads=2, cond_dim=64, vocab_pad_multiple=8)
  c.vae.update(latent_dim=8, recognition_d_model=64, recognition_layers=1, recognition_heads=2,
               kl_anneal_steps=500)  # lambda = 1 only at the end: at 1 from step 300 of 800, VADD collapsed
  c.latent.update(dim=8)
  c.optim.update(lr=2e-3, warmup_steps=100, ema_decay=0.99)
  c.train.update(steps=500, log_every=100, eval_every=500, eval_batches=4, checkpoint_every=500,
                 keep_checkpoints=1)
  c.sample.update(steps=10, num_samples=16)
  c.eval.update(num_batches=4, exact_samples=20000, exact_bins=32)
  if parts[2:] == ["tiny"]:
    c.data.update(batch_size=16, eval_batch_size=16, toy_bins=16)
    c.model.update(d_model=32, n_layers=1, cond_dim=16)
    c.vae.update(latent_dim=4, recognition_d_model=32, kl_anneal_steps=2)
    c.train.update(steps=4, log_every=2, eval_every=4, eval_batches=1, checkpoint_every=4)
    c.sample.update(steps=4, num_samples=8)
    c.eval.update(num_batches=2, exact_samples=512, exact_bins=8)
  return c
