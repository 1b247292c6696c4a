"""Train a model: `python -m ladd.train --config=configs/shakespeare.py --workdir=DIR`.

Resumes automatically from the newest complete checkpoint in DIR.
"""

from absl import app
from absl import flags as absl_flags

from ladd import files, flags
from ladd.errors import one_line_errors
from ladd.train_loop import train

absl_flags.declare_key_flag("config")  # defined in ladd.flags, listed by --helpshort here


def main(argv):
  del argv
  with one_line_errors("ladd.train"):
    flags.start_distributed()
    if flags.CONFIG.value is None:
      raise ValueError("--config is required, e.g. --config=configs/shakespeare.py")
    if not flags.WORKDIR.value:
      raise ValueError("--workdir is required")
    workdir = files.resolve(flags.WORKDIR.value)
    files.make_workdir(workdir)
    train(flags.CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=flags.parser("ladd.train"))
