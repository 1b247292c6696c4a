"""Train-step throughput and MFU of any config on synthetic tokens (no input pipeline).

  python tools/bench_train.py --config=configs/shakespeare.py:base --config.data.batch_size=8

Prints one JSON line: step time, tokens/s per device, model FLOPs per token (the matmuls
of the traced step, as the training log's MFU counts them) and MFU against the device's dense bf16 peak (metrics.PEAK_FLOPS;
none on CPU unless --config.train.peak_tflops_per_device is set).
"""

import json
import time

import jax
import numpy as np
from absl import app
from absl import flags as absl_flags

from ladd import aot, flags, metrics, sharding
from ladd.job import validate
from ladd.methods import build_method
from ladd.trainer import build_trainer

VOCAB = absl_flags.DEFINE_integer("vocab_size", 0, "Vocabulary size (default: data.vocab_size or data.bpe_vocab_size).")
TIMED_STEPS = absl_flags.DEFINE_integer("timed_steps", 10, "Timed steps after two warm-up steps.")


def measure(config, vocab_size, steps):
  mesh = sharding.make_mesh(config.mesh)
  validate(config, mesh)
  method = build_method(config, vocab_size)
  trainer = build_trainer(config, method, mesh)
  state = trainer.init()
  rng = np.random.default_rng(0)
  local = config.data.batch_size // jax.process_count()
  batches = [sharding.global_batch(rng.integers(0, vocab_size, (local, config.data.seq_len), dtype=np.int32), mesh)
             for _ in range(2)]
  start = time.time()
  for i in range(2):  # the first call compiles
    state, out = trainer.train_step(state, batches[i % 2])
  jax.block_until_ready(out)
  compile_and_warmup_s = time.time() - start
  start = time.time()
  for i in range(steps):
    state, out = trainer.train_step(state, batches[i % 2])
  jax.block_until_ready(out)
  step_time = (time.time() - start) / steps
  tokens_per_sec = config.data.batch_size * config.data.seq_len / step_time / jax.device_count()
  peak = metrics.peak_flops_per_device(config.train.peak_tflops_per_device)
  step_flops = aot.model_flops_per_step(config, vocab_size, mesh)  # per device
  flops_per_token = step_flops * jax.device_count() / (config.data.batch_size * config.data.seq_len)
  return {
      "method": method.name, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
      "mesh": sharding.describe(mesh), "params": int(sum(x.size for x in jax.tree.leaves(state["params"]))),
      "batch_size": config.data.batch_size, "seq_len": config.data.seq_len, "dtype": config.model.dtype,
      "step_time_s": step_time, "tokens_per_sec_per_device": tokens_per_sec,
      "flops_per_token": flops_per_token, "compile_and_warmup_s": compile_and_warmup_s,
      "mfu": step_flops / step_time / peak if peak else None,
  }


def main(argv):
  del argv
  config = flags.CONFIG.value  # the entry points' --config
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/shakespeare.py:base")
  vocab = VOCAB.value or config.data.vocab_size or config.data.bpe_vocab_size
  print(json.dumps(measure(config, vocab, TIMED_STEPS.value)), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=flags.parser("bench_train"))
