"""Bad user input (config, flags, data, checkpoints) ends an entry point with one line."""

import contextlib
import os
import sys


@contextlib.contextmanager
def one_line_errors(program):
  """Turns ValueError / FileNotFoundError into `program: error: ...` and exit status 2.

  Set LADD_DEBUG=1 to get the full traceback instead.
  """
  try:
    yield
  except (ValueError, FileNotFoundError) as e:
    if os.environ.get("LADD_DEBUG"):
      raise
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
