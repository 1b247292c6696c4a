"""absl flags shared by the entry points."""

import re
import sys

from absl import flags
from absl import logging as absl_logging

WORKDIR = flags.DEFINE_string("workdir", None, "Work directory: checkpoints, metrics, tokenizer, samples.")
COORDINATOR = flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 for multi-process runs.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.")
PEER_TIMEOUT = flags.DEFINE_float("peer_timeout_s", 60.0, "Multi-process runs: exit when another process is silent this long.")
DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection (TPU pods, SLURM).")


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
    return argv
  return parse
