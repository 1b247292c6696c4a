"""A jax.profiler trace of a window of train steps: train.profile_steps = (START, COUNT)
traces steps START + 1 ... START + COUNT into <workdir>/profile (open with TensorBoard's
profile plugin or Perfetto); COUNT 0 traces nothing."""

import os

import jax


def profile_dir(workdir):
  return os.path.join(workdir, "profile")


class StepWindowProfiler:
  def __init__(self, profile_steps, workdir, total_steps):
    self.start, count = profile_steps
    self.count = max(0, min(count, total_steps - self.start))  # a window past the end stops there
    self.workdir = workdir
    self.active = False

  def before_step(self, step):
    """`step` train steps are done; the next one is about to be dispatched."""
    if self.count and step == self.start:
      jax.profiler.start_trace(profile_dir(self.workdir))
      self.active = True

  def after_step(self, step, state):
    """Stops after COUNT steps, once their device work has finished (it runs asynchronously)."""
    if self.active and step == self.start + self.count:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      if jax.process_index() == 0:
        print(f"profile of steps {self.start + 1}-{step} written to {profile_dir(self.workdir)}", flush=True)
