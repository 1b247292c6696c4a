"""MDLM-small (768 x 12 layers x 12 heads, L = 1024) on OpenWebText in GPT-2 tokens,
read from shards prepared once with the MDLM protocol (EOS-joined documents wrapped to
1024 tokens, the last 100k documents held out):

  python -m ladd.prepare --source=tfds:openwebtext --tfds_data_dir=/data/tfds \\
      --output=/data/owt_gpt2 --workers=16
  python -m ladd.train --config=configs/openwebtext.py --workdir=DIR \\
      --config.data.path=/data/owt_gpt2

(The tfds dataset must be built on a machine with network access first:
`tfds build openwebtext --data_dir=/data/tfds --file_format=array_record`.)
Variants: default (MDLM), `ar` (the autoregressive baseline and judge, same backbone).
A TPU pod slice: configs/openwebtext_pod.py.
"""

from ladd.config import default_config

VARIANTS = ("", "ar")
GPT2_VOCAB = 50257


def get_config(variant=""):
  c = default_config()
  c.data.update(source="prepared", path="/data/owt_gpt2", tokenizer="gpt2", vocab_size=GPT2_VOCAB,
                seq_len=1024, batch_size=512, eval_batch_size=512, num_workers=8)
  c.model.update(d_model=768, n_layers=12, n_heads=12, cond_dim=128, dtype="bfloat16", remat="full")
  c.optim.update(lr=3e-4, warmup_steps=2500, weight_decay=0.0, ema_decay=0.9999)
  c.train.update(steps=1_000_000, log_every=100, eval_every=10_000, eval_batches=64,
                 checkpoint_every=5_000, keep_checkpoints=3)
  c.eval.update(num_batches=0)
  if variant == "ar":
    c.method = "ar"
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/openwebtext.py; choose ar")
  return c
