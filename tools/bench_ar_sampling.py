"""Autoregressive sampling with and without the key/value cache (sample.cache), timed.

  python -m tools.bench_ar_sampling                       # CPU sizes
  python -m tools.bench_ar_sampling --seq_len=1024 --d_model=768 --n_layers=12 --batch=32

Both samplers draw the same tokens (tests/test_ar.py); the cached one runs one position
per network call instead of the whole prefix. They are compiled first, then timed in
alternating windows and the ratio of medians is reported, which keeps the figure
meaningful on a machine shared with other jobs. Prints one JSON line. Any backend.
"""

import json
import statistics
import time

import jax
from absl import app
from absl import flags as absl_flags
from flax import nnx

from ladd.config import default_config
from ladd.diffusion.sampling import SamplerSettings
from ladd.methods.ar import Autoregressive

SEQ_LEN = absl_flags.DEFINE_integer("seq_len", 256, "Sequence length L.")
D_MODEL = absl_flags.DEFINE_integer("d_model", 128, "Model width.")
N_LAYERS = absl_flags.DEFINE_integer("n_layers", 4, "Blocks.")
BATCH = absl_flags.DEFINE_integer("batch", 8, "Samples per call.")
WINDOWS = absl_flags.DEFINE_integer("windows", 3, "Alternating timing windows per sampler.")
VOCAB = 256


def compiled_sampler(method, model, cache):
  graphdef, state = nnx.split(model)
  settings = SamplerSettings(cache=cache)
  draw = jax.jit(lambda state, key: method.sample(nnx.merge(graphdef, state), key, BATCH.value, settings)[0])
  jax.block_until_ready(draw(state, jax.random.key(0)))
  return lambda: jax.block_until_ready(draw(state, jax.random.key(1)))


def main(argv):
  del argv
  config = default_config()
  config.data.seq_len = SEQ_LEN.value
  config.model.update(d_model=D_MODEL.value, n_layers=N_LAYERS.value, n_heads=max(1, D_MODEL.value // 64))
  method = Autoregressive(config, VOCAB)
  with nnx.use_eager_sharding(False):
    model = nnx.jit(method.init_model)(nnx.Rngs(0))
  samplers = {cache: compiled_sampler(method, model, cache) for cache in (True, False)}
  seconds = {True: [], False: []}
  for _ in range(WINDOWS.value):
    for cache, draw in samplers.items():
      start = time.perf_counter()
      draw()
      seconds[cache].append(time.perf_counter() - start)
  cached, uncached = (statistics.median(seconds[c]) for c in (True, False))
  print(json.dumps({"backend": jax.default_backend(), "seq_len": SEQ_LEN.value, "d_model": D_MODEL.value,
                    "n_layers": N_LAYERS.value, "batch": BATCH.value,
                    "cached_s": round(cached, 4), "uncached_s": round(uncached, 4),
                    "speedup": round(uncached / cached, 2),
                    "tokens_per_s_cached": round(BATCH.value * SEQ_LEN.value / cached, 1)}))


if __name__ == "__main__":
  app.run(main)
