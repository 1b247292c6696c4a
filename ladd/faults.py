"""What long runs meet besides bad input: preemption signals and non-finite steps."""

import atexit
import os
import signal
import sys
import threading
import time

import jax
import numpy as np

from ladd import errors


class NonFiniteError(ValueError):
  pass


class Preemption:
  """SIGTERM / SIGINT ask the training loop to finish its step, save and stop.

  One process: a Python handler sets a flag. Several processes: JAX's preemption
  service (on with jax.distributed) catches SIGTERM and agrees with every process on
  the step to stop at (`reached_preemption_sync_point`); a SIGINT is turned into a
  SIGTERM to join that protocol. A second signal stops at once.
  """

  def __init__(self):
    self.signal = None
    self.multiprocess = jax.process_count() > 1
    self._previous = {}

  def __enter__(self):
    handled = (signal.SIGINT,) if self.multiprocess else (signal.SIGTERM, signal.SIGINT)
    self._previous = {s: signal.signal(s, self._handle) for s in handled}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None:
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name
    if self.multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step):
    """Whether to save and stop after `step`; every process must call it at every step."""
    if self.multiprocess:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal = self.signal or "SIGTERM"
        return True
      return False
    return self.signal is not None


class NonFiniteGuard:
  """Collects each step's finiteness flag (a device scalar, no host sync) and reads
  them in one transfer when a step is about to be logged, evaluated or saved."""

  def __init__(self, skip):
    self.skip = skip
    self.pending = []
    self.skipped_total = 0

  def add(self, step, finite):
    self.pending.append((step, finite))

  def check(self, last_good):
    """Number of non-finite steps since the last check (their updates were not applied:
    train.skip_nonfinite), or NonFiniteError naming the first one and `last_good`."""
    if not self.pending:
      return 0
    steps = [s for s, _ in self.pending]
    finite = np.asarray(jax.device_get([f for _, f in self.pending]))
    self.pending = []
    bad = [s for s, ok in zip(steps, finite) if not ok]
    if bad and not self.skip:
      raise NonFiniteError(
          f"non-finite loss or gradient norm at step {bad[0]}; stopped without saving it "
          f"(last good checkpoint: {last_good}); lower optim.lr or set train.skip_nonfinite=True to skip such steps")
    self.skipped_total += len(bad)
    return len(bad)


class PeerWatchdog:
  """Multi-process runs: every process beats a counter in the JAX coordination service's
  key-value store; one whose peer's counter stops for `timeout_s` (the peer died or
  hangs) or that loses the coordinator exits with one line naming the lost process,
  instead of waiting in a collective until JAX's heartbeat aborts it with a stack dump.
  JAX's own heartbeat timeout is set longer, so this line comes first.
  """

  def __init__(self, client, process_id, num_processes, timeout_s):
    self.client, self.process_id, self.num_processes = client, process_id, num_processes
    self.timeout_s = timeout_s
    self.exiting = False  # normal exit: peers stop at slightly different times
    atexit.register(setattr, self, "exiting", True)
    threading.Thread(target=self._watch, daemon=True, name="ladd-peer-watchdog").start()

  def _watch(self):
    seen = {p: (None, time.monotonic()) for p in range(self.num_processes) if p != self.process_id}
    beat = 0
    while True:
      beat += 1
      try:
        self.client.key_value_set(f"ladd/alive/{self.process_id}", str(beat), allow_overwrite=True)
        beats = {key.rsplit("/", 1)[-1]: value for key, value in self.client.key_value_dir_get("ladd/alive/")}
      except Exception:  # the coordination service runs in process 0
        self._lost(0, "the coordinator stopped answering")
        return
      now = time.monotonic()
      for peer, (value, since) in seen.items():
        if beats.get(str(peer)) != value:
          seen[peer] = (beats.get(str(peer)), now)
        elif now - since > self.timeout_s:
          self._lost(peer, f"no heartbeat for {self.timeout_s:g} s")
          return
      time.sleep(min(1.0, self.timeout_s / 5))

  def _lost(self, peer, why):
    if self.exiting:
      return
    print(f"{errors.program()}: error: lost process {peer} of {self.num_processes} ({why}: it died or hangs); "
          "stopping; relaunch every process to resume from the newest checkpoint", file=sys.stderr, flush=True)
    os._exit(3)
