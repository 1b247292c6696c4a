"""Build time of a text dataset: the first build (tokenizer trained, splits tokenised
into the work directory's cache) and a rebuild that reads the cache.

  python -m tools.bench_data                                   # Shakespeare, char tokens
  python -m tools.bench_data --config=configs/shakespeare.py:bpe

Prints one JSON line. tests/test_data.py checks what the cache guarantees (a rebuild
serves the cached files and rewrites none); speed is measured only here.
"""

import json
import tempfile
import time

from absl import app
from ml_collections import config_flags

from ladd.data import build_dataset

CONFIG = config_flags.DEFINE_config_file("config", "configs/shakespeare.py", "Config whose data section is built.", lock_config=True)


def timed_build(data_cfg, workdir):
  start = time.perf_counter()
  dataset = build_dataset(data_cfg, workdir)
  return dataset, time.perf_counter() - start


def main(argv):
  del argv
  data_cfg = CONFIG.value.data
  with tempfile.TemporaryDirectory() as workdir:
    dataset, first_s = timed_build(data_cfg, workdir)
    _, cached_s = timed_build(data_cfg, workdir)
  print(json.dumps({"source": data_cfg.source, "tokenizer": data_cfg.tokenizer, "vocab_size": dataset.vocab_size,
                    "train_examples": len(dataset.train_examples), "first_build_s": first_s,
                    "cached_build_s": cached_s}), flush=True)


if __name__ == "__main__":
  app.run(main)
