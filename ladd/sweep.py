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

from ladd import checkpoint, text_metrics
from ladd.diffusion.sampling import SamplerSettings
from ladd.errors import one_line_errors
from ladd.flags import parser
from ladd.generate import sample
from ladd.job import load_trained

WORKDIRS = absl_flags.DEFINE_list("workdirs", None, "Work directories to sample from.")
JUDGE = absl_flags.DEFINE_string("judge", None, "An 'ar' work directory or a GPT-2 safetensors directory.")
STEPS = absl_flags.DEFINE_list("steps", ["4", "8", "16", "32", "64", "128"], "Sampling steps N.")
TEMPERATURES = absl_flags.DEFINE_list("temperatures", ["1.0"], "Softmax temperatures.")
NUM_SAMPLES = absl_flags.DEFINE_integer("num_samples", 32, "Samples per setting.")
SEED = absl_flags.DEFINE_integer("seed", 0, "Sampling seed.")
OUTPUT = absl_flags.DEFINE_string("output", None, "Output directory.")


def sweep_workdir(workdir, judge, steps, temperatures, num_samples, seed):
  """(sample records, one metrics row per setting) of one checkpoint."""
  job, step, params, model_state = load_trained(workdir)
  records, rows = [], []
  for n in steps:
    for temperature in temperatures:
      settings = SamplerSettings(steps=n, temperature=temperature)
      tokens, nfe = sample(job, params, model_state, settings, num_samples, num_samples, seed)
      base = dict(job.method.describe(), workdir=workdir, steps=n, nfe=nfe, temperature=temperature,
                  seed=seed, checkpoint_step=int(step))
      mine = [dict(base, index=i, text=job.dataset.decode(row)) for i, row in enumerate(tokens)]
      metrics = text_metrics.sample_metrics(mine, judge)
      records += mine
      rows.append(dict(base, **{k: metrics[k] for k in ("gen_ppl", "unigram_entropy", "repeated_4grams", "tokens")}))
  return records, rows


def main(argv):
  del argv
  with one_line_errors("ladd.sweep"):
    if not WORKDIRS.value or not JUDGE.value or not OUTPUT.value:
      raise ValueError("--workdirs, --judge and --output are required")
    steps = [int(s) for s in STEPS.value]
    temperatures = [float(t) for t in TEMPERATURES.value]
    judge = text_metrics.load_judge(os.path.abspath(JUDGE.value))
    records, rows = [], []
    for workdir in WORKDIRS.value:
      more_records, more_rows = sweep_workdir(os.path.abspath(workdir), judge, steps, temperatures,
                                              NUM_SAMPLES.value, SEED.value)
      records += more_records
      rows += more_rows
    os.makedirs(OUTPUT.value, exist_ok=True)
    with open(os.path.join(OUTPUT.value, "samples.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    checkpoint.write_json(os.path.join(OUTPUT.value, "sweep.json"), {
        "judge": judge.description, "judge_tokenizer": judge.tokenizer.kind, "rows": rows})
    table = text_metrics.frontier_table(rows)
    with open(os.path.join(OUTPUT.value, "frontier.md"), "w") as f:
      f.write(table)
    text_metrics.plot_frontier(rows, os.path.join(OUTPUT.value, "frontier.png"))
    print(table, flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parser("ladd.sweep"))
