"""Bad user input (config, flags, data, checkpoints) ends an entry point with one line."""

import contextlib
import os
import sys


@contextlib.contextmanager
def one_line_errors(program):
  """Turns ValueError / OSError into `program: error: ...` (one line) and exit status 2.

  Set LADD_DEBUG=1 to get the full traceback instead.
  """
  try:
    yield
  except (ValueError, OSError) as e:
    if os.environ.get("LADD_DEBUG"):
      raise
    message = " ".join(str(e).split()) or type(e).__name__
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
