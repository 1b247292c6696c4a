"""The complete default configuration. Every key the code reads is defined here;
files in configs/ override values (big_vision style `get_config(arg)` with variants).
"""

import ml_collections


def default_config():
  c = ml_collections.ConfigDict()
  c.method = "mdlm"
  c.seed = 0

  c.data = dict(
      source="shakespeare", tokenizer="char", bpe_vocab_size=2048, seq_len=256,
      batch_size=64, eval_batch_size=64, shuffle_seed=0, num_workers=0,
      path="", eval_path="", vocab_size=0,
      tfds_name="", tfds_data_dir="", tfds_train_split="train",
      tfds_eval_split="validation", tfds_text_key="text",
      binsaw_saws=2, binsaw_floor=0.01,
      eval_plays=("hamlet", "the-tempest", "twelfth-night"),
  )
  c.model = dict(
      d_model=256, n_layers=4, n_heads=4, mlp_ratio=4, cond_dim=128,
      time_conditioning=False, dtype="float32", remat=False, attention_impl="xla",
      vocab_pad_multiple=128,
  )
  c.diffusion = dict(
      schedule="linear",  # linear | cosine | polynomial
      eps=1e-4,
      power=2.0,  # polynomial schedule exponent
      train_loss="nelbo",  # nelbo (weighted, per token) | masked_ce (unweighted, per token)
  )
  c.optim = dict(
      lr=3e-4, warmup_steps=100, decay="cosine", min_lr_ratio=0.1,
      weight_decay=0.0, b1=0.9, b2=0.999, grad_clip=1.0, ema_decay=0.999,
  )
  c.train = dict(
      steps=1000, log_every=50, eval_every=500, eval_batches=8,
      checkpoint_every=500, keep_checkpoints=3,
      peak_tflops_per_device=0.0,  # 0 = look up by device kind; unknown kinds report no MFU
  )
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sample = dict(steps=128, num_samples=8, temperature=1.0, final_fill="sample", cache=True, seed=0)
  c.eval = dict(num_batches=0, t_samples=1, seed=0)  # num_batches 0 = the whole held-out split
  return c
