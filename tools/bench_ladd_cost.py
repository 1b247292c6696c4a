"""Train-step cost of joint Co-LADD relative to MDLM at the same backbone size.

  python -m tools.bench_ladd_cost                      # CPU quickstart sizes
  python -m tools.bench_ladd_cost --ladd_config=configs/ladd_shakespeare.py:co_joint --batch=64

MDLM is the same config with `method = "mdlm"` (its latent settings unused), so the token
backbone is identical; Co-LADD adds the encoder, the latent stream's per-stream weights
and S' latent positions in the shared attention. The two train steps are timed in
alternating windows and the ratio of medians is reported, which keeps the figure
meaningful on a machine shared with other jobs. Prints one JSON line. Works on any
backend (CPU, GPU).
"""

import json
import statistics
import time

import jax
import numpy as np
from absl import app
from absl import flags as absl_flags
from ml_collections import config_flags

from ladd import sharding
from ladd.job import validate
from ladd.methods import build_method
from ladd.trainer import build_trainer

CONFIG = config_flags.DEFINE_config_file("ladd_config", "configs/ladd_shakespeare.py:co_joint", "The LADD config.", lock_config=True)
BATCH = absl_flags.DEFINE_integer("batch", 0, "Batch size (default: the config's).")
WINDOWS = absl_flags.DEFINE_integer("windows", 6, "Alternating timing windows per method.")
WINDOW_STEPS = absl_flags.DEFINE_integer("window_steps", 5, "Train steps per window.")
VOCAB = 128


def compiled_step(config):
  """(step function, state, batch) with the train step already compiled."""
  mesh = sharding.make_mesh(config.mesh)
  validate(config, mesh)
  trainer = build_trainer(config, build_method(config, VOCAB), mesh)
  state = trainer.init()
  tokens = np.random.default_rng(0).integers(0, VOCAB, (config.data.batch_size, config.data.seq_len), dtype=np.int32)
  batch = sharding.global_batch(tokens, mesh)
  state, out = trainer.train_step(state, batch)
  jax.block_until_ready(out)
  return trainer.train_step, state, batch


def timed_window(step, state, batch, steps):
  start = time.perf_counter()
  for _ in range(steps):
    state, out = step(state, batch)
  jax.block_until_ready(out)
  return state, (time.perf_counter() - start) / steps


def main(argv):
  del argv
  ladd_config = CONFIG.value.copy_and_resolve_references()
  if BATCH.value:
    ladd_config.data.batch_size = BATCH.value
  mdlm_config = ladd_config.copy_and_resolve_references()
  mdlm_config.method = "mdlm"
  runs = {"mdlm": list(compiled_step(mdlm_config)), ladd_config.method: list(compiled_step(ladd_config))}
  times = {name: [] for name in runs}
  for _ in range(WINDOWS.value):
    for name, run in runs.items():
      run[1], seconds = timed_window(*run, WINDOW_STEPS.value)
      times[name].append(seconds)
  median = {name: statistics.median(values) for name, values in times.items()}
  m = ladd_config.model
  print(json.dumps({
      "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
      "backbone": f"d={m.d_model} x {m.n_layers} layers, L={ladd_config.data.seq_len}, batch={ladd_config.data.batch_size}, {m.dtype}",
      "latent": f"{ladd_config.latent.schedule}, S'={ladd_config.latent.slots}, d={ladd_config.latent.dim}, "
                f"encoder {ladd_config.latent.encoder_layers} x d={ladd_config.latent.encoder_d_model}",
      "step_time_s": median, "ratio": median[ladd_config.method] / median["mdlm"],
      "reference_pytorch_ratio": "1.36-1.45", "target_ratio": "<= 1.25",
  }), flush=True)


if __name__ == "__main__":
  app.run(main)
