"""absl flags shared by the entry points."""

from absl import flags

WORKDIR = flags.DEFINE_string("workdir", None, "Work directory: checkpoints, metrics, tokenizer, samples.")
COORDINATOR = flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 for multi-process runs.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in a multi-process run.")
PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in a multi-process run.")
DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection (TPU pods, SLURM).")


def start_distributed():
  from ladd.job import init_distributed
  init_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value, DISTRIBUTED.value)
