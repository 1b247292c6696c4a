"""Bad user input (config, flags, data, checkpoints) ends an entry point with one line."""

import contextlib
import os
import sys
import types

_program = "ladd"


def debug():
  return bool(os.environ.get("LADD_DEBUG"))


def program():
  return _program


def warn(message):
  """One `program: warning: ...` line on stderr."""
  print(f"{_program}: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _drop_coroutine_noise(unraisable):
  """Failed TensorStore reads leave orbax coroutines whose exceptions Python reports as
  "Exception ignored in <coroutine ...>" tracebacks when they are collected; the error
  they belong to has already been reported (or handled) as one line."""
  if not isinstance(unraisable.object, types.CoroutineType):
    sys.__unraisablehook__(unraisable)


@contextlib.contextmanager
def one_line_errors(program):
  """Turns ValueError / OSError into `program: error: ...` (one line) and exit status 2.

  Set LADD_DEBUG=1 to get the full traceback instead.
  """
  global _program
  _program = program
  if not debug():
    sys.unraisablehook = _drop_coroutine_noise
  try:
    yield
  except (ValueError, OSError) as e:
    if debug():
      raise
    message = " ".join(str(e).split()) or type(e).__name__
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
