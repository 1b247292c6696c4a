"""Compile the train step and sampler for a TPU slice ahead of time, on any machine:
`python -m ladd.compile --config=configs/openwebtext_pod.py --topology=v5p:4x4x8`.

Prints the mesh, per-chip memory (arguments, temporaries, outputs, total against the
chip's HBM), FLOPs per step and compile times; a program that does not fit gets one line
saying by how much and which knob helps, and exit status 1. Needs libtpu
(`pip install -c constraints.txt -e '.[tpu]'`); nothing runs on a TPU.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compiling only: never claim an accelerator here

from absl import app  # noqa: E402
from absl import flags as absl_flags  # noqa: E402

from ladd import aot, flags  # noqa: E402
from ladd.errors import one_line_errors  # noqa: E402

TOPOLOGY = absl_flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p:4x4x8 (v5p-128), v6e:16x16, v5e:2x2, v4:2x2x1.")
SAMPLER = absl_flags.DEFINE_bool("sampler", True, "Also compile the sampler (config sample.*).")

absl_flags.declare_key_flag("config")  # defined in ladd.flags, listed by --helpshort here


def main(argv):
  del argv
  with one_line_errors("ladd.compile"):
    if flags.CONFIG.value is None:
      raise ValueError("--config is required, e.g. --config=configs/openwebtext_pod.py")
    if not TOPOLOGY.value:
      raise ValueError("--topology is required, e.g. --topology=v5p:4x4x8")
    slice_ = aot.tpu_slice(TOPOLOGY.value)
    mesh, n_params, flops, reports = aot.compile_for_slice(flags.CONFIG.value, slice_.devices, SAMPLER.value)
  lines, misses = aot.format_report(slice_, flags.CONFIG.value, mesh, n_params, flops, reports)
  print("\n".join(lines), flush=True)
  for miss in misses:
    print(f"ladd.compile: {miss}", file=sys.stderr, flush=True)
  sys.exit(1 if misses else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=flags.parser("ladd.compile"))
