"""Template: MDLM at GPT-2 small scale on OpenWebText across a TPU pod slice.

Prepare the dataset once on a machine with network access
(`tfds build openwebtext --data_dir=/mnt/shared/tfds`) and copy it to a filesystem every host mounts, then launch on every host:
  python -m ladd.train --config=configs/openwebtext_pod.py --workdir=/mnt/shared/runs/owt \
      --distributed
Variants: default (v5p-128: fsdp over all chips), `:v5e` (data x fsdp on 16x16),
`:1b` (2048 x 20 layers, 1.25B parameters), `:8b` (4096 x 36 layers, 7.78B parameters, scanned).
`python -m ladd.compile --config=configs/openwebtext_pod.py:1b --topology=v5p:4x4x8` reports
whether a variant fits a slice (README "Memory per chip").
"""

from ladd.config import default_config

VARIANTS = ("", "v5e", "1b", "8b")


def get_config(variant=""):
  c = default_config()
  c.data.update(source="tfds", tfds_name="openwebtext", tfds_data_dir="/mnt/shared/tfds",
                tfds_train_split="train[:-100000]", tfds_eval_split="train[-100000:]",
                tokenizer="bpe", bpe_vocab_size=50257, seq_len=1024, batch_size=512,
                eval_batch_size=512, num_workers=8)
  c.model.update(d_model=768, n_layers=12, n_heads=12, cond_dim=128, dtype="bfloat16", remat="full")
  c.optim.update(lr=3e-4, warmup_steps=2500, weight_decay=0.0, ema_decay=0.9999)
  c.train.update(steps=1_000_000, log_every=100, eval_every=10_000, eval_batches=64,
                 checkpoint_every=5_000, keep_checkpoints=3)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.eval.update(num_batches=0)
  if variant == "v5e":
    c.mesh.update(data=2, fsdp=-1, tensor=1)
  elif variant == "1b":
    c.model.update(d_model=2048, n_layers=20, n_heads=16)
  elif variant == "8b":
    # scanned: 36 unrolled layers take far longer to compile (README "Memory per chip")
    c.model.update(d_model=4096, n_layers=36, n_heads=32, scan_layers=True)
    c.optim.update(lr=1.5e-4)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/openwebtext_pod.py; choose v5e, 1b or 8b")
  return c
