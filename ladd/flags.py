"""absl flags shared by the entry points: absl allows one definition of a name per process,
so a flag that more than one entry point takes is defined here, once, with help that holds
for each of them (library code, experiments and tests import every entry point together)."""

import logging
import re
import sys

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/x.py:variant).", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Work directory: checkpoints, metrics, tokenizer, samples.")
COORDINATOR = flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 for multi-process runs.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.")
PEER_TIMEOUT = flags.DEFINE_float("peer_timeout_s", 60.0, "Multi-process runs: exit when another process is silent this long.")
DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection (TPU pods, SLURM).")
CHECKPOINT_STEP = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step to load (default: newest).")
PARAMS = flags.DEFINE_enum("params", "ema", ["ema", "raw"], "EMA or raw parameters.")
SEED = flags.DEFINE_integer("seed", None, "Seed (ladd.sample: default config sample.seed; ladd.evaluate: the estimator's, default config eval.seed; ladd.sweep: default 0).")
STEPS = flags.DEFINE_list("steps", None, "Sampling steps N (ladd.sample: one count, default config sample.steps; ladd.sweep: a comma-separated list, default 4,8,16,32,64,128).")
NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Number of samples (ladd.sample: default config sample.num_samples; ladd.sweep: per setting, default 32).")
OUTPUT = flags.DEFINE_string("output", "", "ladd.sample: output JSONL (default: <workdir>/samples.jsonl); ladd.evaluate: output JSON (default: <workdir>/eval.json; with --data: <workdir>/eval_<data name>.json); ladd.prepare: output directory for shards and manifest; ladd.sweep: output directory.")
LATENT_INIT = flags.DEFINE_enum("latent_init", None, ["prior", "encoder", "resample"], "A latent drawn before the tokens, with clamped tokens: prior; encoder of the clamped tokens (sequential LADD); prior draws resampled by the clamps' likelihood (VMD). Default: config sample.latent_init.")
LATENT_CANDIDATES = flags.DEFINE_integer("latent_candidates", None, "latent_init=resample: prior draws to choose from (default: config sample.latent_candidates).")
JUDGE = flags.DEFINE_string("judge", "", "Work directory of an autoregressive (method 'ar') checkpoint, or a local GPT-2 directory (config.json + model.safetensors): ladd.evaluate --samples and ladd.sweep score text under it.")


def value_or(flag, default):
  """The flag's value, or `default` where it was not given (flags whose default is None)."""
  return default if flag.value is None else flag.value


def integers(flag):
  """The values of a list flag as integers; a non-integer gets one line naming the flag."""
  try:
    return [int(v) for v in flag.value]
  except ValueError:
    raise ValueError(f"--{flag.name} must be a comma-separated list of integers, got {','.join(flag.value)!r}") from None


def start_distributed():
  from ladd.job import init_distributed
  init_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value, DISTRIBUTED.value, PEER_TIMEOUT.value)


def parser(program):
  """A flags parser for app.run that reports bad flags (typos in --config.* included)
  as one line and exit status 2 instead of a traceback, and turns the libraries' INFO
  logs off unless --verbosity (absl's flag, e.g. --verbosity=0 for INFO) is given."""
  def parse(argv):
    try:
      argv = flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
      message = str(e).replace("\\n", "\n").replace("\\'", "'")
      if "Traceback" in message:  # a config file raised: its own message is the last line
        message = message.strip().splitlines()[-1]
      typo = re.search(r'Did you mean "(.+?)" instead of "(.+?)"', message)  # a --config.* typo
      if typo:
        message = f"unknown config key {typo.group(2)!r}; did you mean {typo.group(1)!r}?"
      elif isinstance(e, (AttributeError, KeyError)):
        message = f"unknown config key {message.strip(chr(34))}"
      message = " ".join(message.split())
      print(f"{program}: error: bad flag: {message}", file=sys.stderr, flush=True)
      sys.exit(2)
    if not flags.FLAGS["verbosity"].present:  # libraries' INFO lines (orbax, grain) only on request
      absl_logging.set_verbosity(absl_logging.WARNING)
      # gcsfs logs every failed request with its traceback, then raises what ladd reports in one line
      logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    return argv
  return parse
