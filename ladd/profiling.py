"""A jax.profiler trace of a window of train steps: train.profile_steps = (START, COUNT)
traces steps START + 1 ... START + COUNT into <workdir>/profile (open with TensorBoard's
profile plugin or Perfetto); COUNT 0 traces nothing.

The profiler writes through XLA's own file systems: its gs:// ignores the endpoint ladd's
other files may be given (STORAGE_EMULATOR_HOST: an emulator), and it has no s3://. So a
trace for a work directory that is not local is written to a local temporary directory and
uploaded with ladd.files when it stops."""

import os
import shutil
import tempfile

import jax

from ladd import files


def profile_dir(workdir):
  return os.path.join(workdir, "profile")


class StepWindowProfiler:
  def __init__(self, profile_steps, workdir, total_steps):
    self.start, count = profile_steps
    self.count = max(0, min(count, total_steps - self.start))  # a window past the end stops there
    self.workdir = workdir
    self.trace_dir = None  # while tracing

  def before_step(self, step):
    """`step` train steps are done; the next one is about to be dispatched."""
    if self.count and step == self.start:
      local = files.is_local(self.workdir)
      self.trace_dir = profile_dir(self.workdir) if local else tempfile.mkdtemp(prefix="ladd-profile-")
      jax.profiler.start_trace(self.trace_dir)

  def after_step(self, step, state):
    """Stops after COUNT steps, once their device work has finished (it runs asynchronously)."""
    if self.trace_dir and step == self.start + self.count:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      if not files.is_local(self.workdir):
        files.upload_tree(self.trace_dir, profile_dir(self.workdir))  # each host its own files
        shutil.rmtree(self.trace_dir)
      self.trace_dir = None
      if jax.process_index() == 0:
        print(f"profile of steps {self.start + 1}-{step} written to {profile_dir(self.workdir)}", flush=True)
