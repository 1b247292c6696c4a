"""Sample several checkpoints over steps x temperature and score every setting under one
judge: `python -m ladd.sweep --workdirs=A,B --judge=J --steps=4,8,16 --temperatures=1.0`.

Writes to --output: samples.jsonl (every sample with its sampler record), sweep.json
(the metrics of every setting, with judge and tokenizer), frontier.md (the table) and
frontier.png (gen-PPL against entropy and against NFE).
"""

import json
import os

from absl import app
from absl import flags as absl_flags

from ladd import checkpoint, files, flags, text_metrics
from ladd.errors import one_line_errors
from ladd.evaluation import sweep_workdir

WORKDIRS = absl_flags.DEFINE_list("workdirs", None, "Work directories to sample from.")
TEMPERATURES = absl_flags.DEFINE_list("temperatures", ["1.0"], "Softmax temperatures.")

for shared in ("judge", "steps", "num_samples", "seed", "output"):  # defined in ladd.flags, listed by --helpshort here
  absl_flags.declare_key_flag(shared)


def main(argv):
  del argv
  with one_line_errors("ladd.sweep"):
    if not WORKDIRS.value or not flags.JUDGE.value or not flags.OUTPUT.value:
      raise ValueError("--workdirs, --judge and --output are required")
    steps = [4, 8, 16, 32, 64, 128] if flags.STEPS.value is None else flags.integers(flags.STEPS)
    temperatures = [float(t) for t in TEMPERATURES.value]
    judge = text_metrics.load_judge(files.resolve(flags.JUDGE.value))
    records, rows = [], []
    for workdir in WORKDIRS.value:
      more_records, more_rows = sweep_workdir(files.resolve(workdir), judge, steps, temperatures,
                                              flags.value_or(flags.NUM_SAMPLES, 32), flags.value_or(flags.SEED, 0))
      records += more_records
      rows += more_rows
    files.make_workdir(flags.OUTPUT.value)
    files.write_text(os.path.join(flags.OUTPUT.value, "samples.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    checkpoint.write_json(os.path.join(flags.OUTPUT.value, "sweep.json"), {
        "judge": judge.description, "judge_tokenizer": judge.tokenizer.kind, "rows": rows})
    table = text_metrics.frontier_table(rows)
    files.write_text(os.path.join(flags.OUTPUT.value, "frontier.md"), table)
    text_metrics.plot_frontier(rows, os.path.join(flags.OUTPUT.value, "frontier.png"))
    print(table, flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=flags.parser("ladd.sweep"))
