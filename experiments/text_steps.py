"""Text quality vs sampling steps on the embedded Shakespeare plays (BPE tokens; issue 11,
item 6): the AR judge, MDLM, VADD, VMD and Co-/Di-LADD (sequential and joint schedules).

    python -m experiments.text_steps --workdir=/work/expdirs/text_steps

Trains every model at one CPU-sized backbone (`cpu_sized`), the AR model first: it is the
judge. Reports for each the held-out NELBO (a bound on -log p(x0) unless marked †; for the
AR model its exact NLL, so its perplexity is exact) and, for N in --sampling_steps, the
gen-PPL under the AR judge and the mean unigram entropy of --samples_per_point samples
(ladd.evaluation.sweep_workdir, temperature 1), with the NFE each sampler used. The AR
model is sampled once (left to right, NFE = L); it scores its own samples. A rerun with
the same --workdir retrains nothing that is trained (ladd.train_loop resumes) and only
re-scores. Writes text_steps.md, .json and .png to --results_dir.

`--tiny` makes a smoke run of the whole pipeline in minutes, compilation dominating
(ladd.config.make_tiny models, a 300-token BPE vocabulary, 8 training steps, N = 2, 4,
4 samples).

Cost of the defaults (8 models, 400 steps each, d_model 64 x 2 layers, L = 128, batch 32,
32 samples per point): 62 min wall on the 2-core CPU machine shared with other work
(experiments/results/text_steps.md gives the time per model). At that budget the diffusion
models learn little more than unigram statistics (held-out NELBO 5.8-6.2 nats/token against
the AR model's 4.93), so the table separates the methods little; --train_steps is the knob.
"""

import json
import math
import os
import sys
import time

from absl import app, flags

from configs import ladd_binsaw, shakespeare
from ladd import checkpoint, summary, text_metrics
from ladd.config import make_tiny
from ladd.evaluation import evaluate, sweep_workdir
from ladd.flags import WORKDIR, parser
from ladd.job import load_trained
from ladd.train_loop import train

RESULTS = flags.DEFINE_string("results_dir", "experiments/results", "Where the table, JSON and plot go.")
TRAIN_STEPS = flags.DEFINE_integer("train_steps", 400, "Training steps per model (--tiny: 8).")
NUM_SAMPLES = flags.DEFINE_integer("samples_per_point", 32, "Samples per (model, N) (--tiny: 4).")
STEPS = flags.DEFINE_list("sampling_steps", ["4", "8", "16", "32", "64", "128"], "Token steps N (--tiny: 2, 4).")
EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 16, "Held-out batches for the NELBO (--tiny: 2).")
ONLY = flags.DEFINE_list("only_runs", [], "Train/evaluate only these runs (names as in RUNS); the"
                         " judge (ar) is trained whenever it is not yet.")
TINY = flags.DEFINE_bool("tiny", False, "A smoke run in minutes: tiny models, few steps and samples.")

JUDGE = "ar"
# name -> LADD variant of configs/ladd_binsaw.py, or the method name. Sequential LADD runs
# N_y = N latent steps before the N token steps (SamplerSettings.latent_steps = 0).
RUNS = {
    JUDGE: "ar",
    "mdlm": "mdlm",
    "vadd": "vadd",
    "vmd": "vmd",
    "co_ladd/sequential": "co_seq",
    "di_ladd/sequential": "di_seq",
    "co_ladd/joint": "co_joint",
    "di_ladd/joint": "di_joint",
}


def tiny():
  return TINY.value


def setting(flag, tiny_value):
  """The flag's value, or the smoke run's unless the flag was given."""
  return tiny_value if tiny() and not flag.present else flag.value


def steps_list():
  return [int(n) for n in setting(STEPS, ["2", "4"])]


def cpu_sized(config):
  """Shared by every run so backbones match: a 2-core CPU budget (or make_tiny with --tiny)."""
  steps = setting(TRAIN_STEPS, 8)
  if tiny():
    make_tiny(config)
    config.data.update(bpe_vocab_size=300)
  else:
    config.model.update(d_model=64, n_layers=2, n_heads=4, cond_dim=32)
    config.data.update(seq_len=128, batch_size=32, eval_batch_size=32)
    config.optim.update(lr=2e-3, warmup_steps=min(100, steps // 10))
  config.vae.update(kl_anneal_steps=steps // 2)
  config.train.update(steps=steps, eval_every=steps, checkpoint_every=steps, log_every=max(steps // 5, 1))
  return config


def make_config(name, tokenizer_path):
  config = shakespeare.get_config("bpe")
  variant = RUNS[name]
  if variant in ladd_binsaw.METHOD_AND_SCHEDULE:
    ladd_binsaw.apply_ladd(config, variant + ("_tiny" if tiny() else ""), "shakespeare")
    config.latent.update(slots=2 if tiny() else 8, encoder_layers=1 if tiny() else 2)  # as configs/ladd_shakespeare.py
  else:
    config.method = variant
  config = cpu_sized(config)
  # every model reads the judge's BPE vocabulary, so all see the same token sequences
  config.data.update(tokenizer_path=tokenizer_path or "")
  return config


def train_once(name, root, tokenizer_path):
  """(work directory, training seconds): trains, or resumes; a trained model is not retrained
  and keeps the time its training took."""
  workdir = os.path.join(root, name.replace("/", "_"))
  record = os.path.join(workdir, "text_steps_train.json")
  if os.path.exists(record):
    with open(record) as f:
      return workdir, json.load(f)["train_s"]
  start = time.time()
  config = make_config(name, tokenizer_path)
  train(config, workdir)
  train_s = time.time() - start
  reached = checkpoint.manager(workdir, read_only=True).latest_step() or 0
  if reached < config.train.steps:  # stopped by a signal: the checkpoint is saved, nothing is scored
    sys.exit(f"experiments.text_steps: {name} stopped at step {reached} of {config.train.steps};"
             " run the same command to resume")
  with open(record, "w") as f:
    json.dump({"train_s": train_s}, f)
  return workdir, train_s


def run_one(name, workdir, train_s, judge):
  start = time.time()
  job, step, params, model_state = load_trained(workdir)
  ev = evaluate(job, params, model_state, num_batches=setting(EVAL_BATCHES, 2), t_samples=1, seed=0)
  kind = ev["kinds"]["nelbo"]
  ppl = ev.get("ppl") if kind == "exact" else ev.get("ppl_bound")
  steps = steps_list()[:1] if name == JUDGE else steps_list()  # AR: one left-to-right pass
  records, points = sweep_workdir(workdir, judge, steps, [1.0], setting(NUM_SAMPLES, 4), seed=1)
  with open(os.path.join(workdir, "text_steps_samples.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  row = {"name": name, "workdir": workdir, "checkpoint_step": int(step), "train_s": train_s,
         "describe": job.method.describe(), "nelbo_per_token": ev["nelbo_per_token"],
         "nelbo_per_token_stderr": ev["nelbo_per_token_stderr"], "kind": kind, "ppl": ppl,
         "vocab_size": ev["vocab_size"], "points": [
             {k: p[k] for k in ("steps", "nfe", "gen_ppl", "gen_nll_per_token_stderr", "unigram_entropy", "repeated_4grams",
                               "tokens")}
             for p in points]}
  for p in row["points"]:
    print(f"{name}: N={p['steps']} NFE={p['nfe']:g} gen-PPL {p['gen_ppl']:.1f} entropy {p['unigram_entropy']:.2f}",
          flush=True)
  row["eval_s"] = time.time() - start
  return row


def nelbo_cell(row):
  value = f"{row['nelbo_per_token']:.3f} ± {row['nelbo_per_token_stderr']:.3f}"
  if row["kind"] == "exact":
    return f"{value} (PPL {row['ppl']:.1f}, exact)"
  if row["kind"] == "bound":
    return f"{value} (PPL ≤ {row['ppl']:.1f})"
  return summary.mark(row["nelbo_per_token"], False, digits=3) + f" ± {row['nelbo_per_token_stderr']:.3f}"


def point_cell(p):
  return (f"**{p['gen_ppl']:.1f}** ±{100 * p['gen_nll_per_token_stderr']:.0f}% / {p['unigram_entropy']:.2f}"
          f" [{p['nfe']:g}]")


def matching_baseline(point, baseline):
  """MDLM's point at the same NFE, else the one with the fewest NFE above it (so MDLM never
  gets the smaller budget); None if MDLM has none that large."""
  larger = [q for q in baseline["points"] if q["nfe"] >= point["nfe"]]
  return min(larger, key=lambda q: q["nfe"]) if larger else None


def versus_baseline(row, baseline):
  """Where the row's gen-PPL is below / above MDLM's at equal NFE by more than two standard
  errors of the difference of their log gen-PPLs, and where the two are within that."""
  verdicts = {"lower": [], "higher": [], "within 2 s.e.": []}
  for p in sorted(row["points"], key=lambda p: p["steps"]):
    q = matching_baseline(p, baseline)
    if q is None:
      continue
    gap = math.log(p["gen_ppl"]) - math.log(q["gen_ppl"])
    noise = 2 * math.hypot(p["gen_nll_per_token_stderr"], q["gen_nll_per_token_stderr"])
    entropy = " (entropy lower by > 0.1)" if p["unigram_entropy"] < q["unigram_entropy"] - 0.1 else ""
    key = "within 2 s.e." if abs(gap) <= noise else ("lower" if gap < 0 else "higher")
    verdicts[key].append(f"{p['steps']}{entropy}" if key == "lower" else str(p["steps"]))
  return "; ".join(f"{k} at N = {', '.join(v)}" for k, v in verdicts.items() if v) or "no MDLM point at its NFE"


def write_table(rows, path, command, seconds):
  steps = steps_list()
  first = rows[0]
  baseline = next((r for r in rows if r["name"] == "mdlm"), None)
  lines = [
      "# Shakespeare (BPE): text quality vs sampling steps", "",
      f"Command: `{command}` ({seconds / 60:.1f} min wall on this machine).", "",
      f"Every model: the same backbone ({'make_tiny' if tiny() else 'd_model 64, 2 layers, 4 heads'};"
      f" `experiments/text_steps.py` cpu_sized), BPE vocabulary {first['vocab_size']} (the judge's, shared),"
      f" {rows[0]['checkpoint_step']} training steps; EMA parameters. Held-out NELBO: nats per token"
      f" over {setting(EVAL_BATCHES, 2)} batches, one t per sequence; a bound on -log p(x0) unless marked"
      " † (a training objective, not a bound: ladd.summary, method.md §7); the AR model's is its exact NLL."
      f" Cell: **gen-PPL** under the AR judge / mean unigram entropy (nats) of {setting(NUM_SAMPLES, 4)}"
      " samples at N token steps, temperature 1, ± the standard error of the log gen-PPL over samples"
      " (in %) [NFE: token-network calls + latent calls; sequential LADD takes N_y = N latent steps]."
      " The AR model samples left to right (NFE = L) and scores itself. Last column: where the gen-PPL"
      " is lower or higher than MDLM's at equal NFE (MDLM's point at the same NFE, else the next larger"
      " one) by more than two standard errors (six tests a row: one such difference in a row is"
      " expected by chance about one time in four).", "",
      "| method | held-out NELBO / NLL | " + " | ".join(f"N={n}" for n in steps) + " | vs MDLM at equal NFE |",
      "|---|---|" + "---|" * (len(steps) + 1),
  ]
  for row in rows:
    by_steps = {p["steps"]: p for p in row["points"]}
    if row["name"] == JUDGE:
      p = row["points"][0]
      cells = ["ancestral: " + point_cell(p)] + [""] * (len(steps) - 1) + [""]
    else:
      cells = [point_cell(by_steps[n]) for n in steps]
      cells.append(versus_baseline(row, baseline) if baseline and row is not baseline else "")
    lines.append(f"| {row['name']} | {nelbo_cell(row)} | " + " | ".join(cells) + " |")
  lines += ["", "Time per model (train / evaluate): "
            + ", ".join(f"{r['name']} {r['train_s'] / 60:.1f} / {r['eval_s'] / 60:.1f} min" for r in rows)]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def write_plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
  for row in rows:
    if row["name"] == JUDGE:
      p = row["points"][0]
      for ax, x in ((left, p["nfe"]), (right, p["unigram_entropy"])):
        ax.plot([x], [p["gen_ppl"]], "k*", ms=10, label="ar (left to right)")
      continue
    points = sorted(row["points"], key=lambda p: p["nfe"])
    left.plot([p["nfe"] for p in points], [p["gen_ppl"] for p in points], marker="o", label=row["name"])
    right.plot([p["unigram_entropy"] for p in points], [p["gen_ppl"] for p in points], marker="o", label=row["name"])
  left.set(xlabel="NFE", ylabel="gen-PPL under the AR judge", xscale="log", yscale="log")
  right.set(xlabel="mean unigram entropy (nats)", ylabel="gen-PPL under the AR judge", yscale="log")
  left.legend(fontsize=7)
  fig.suptitle("Shakespeare (BPE): gen-PPL vs NFE and entropy")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  del argv
  start = time.time()
  root = os.path.abspath(WORKDIR.value or "/tmp/text_steps")
  os.makedirs(RESULTS.value, exist_ok=True)
  command = ("python -m experiments.text_steps " + " ".join(sys.argv[1:])).strip()
  names = ONLY.value or list(RUNS)
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    raise app.UsageError(f"unknown --only_runs {', '.join(unknown)}; choose from {', '.join(RUNS)}")
  judge_workdir, judge_train_s = train_once(JUDGE, root, None)
  tokenizer_path = os.path.join(judge_workdir, "tokenizer.json")
  judge = text_metrics.load_judge(judge_workdir)
  rows = []
  for name in names:  # the files are rewritten after every model
    workdir, train_s = (judge_workdir, judge_train_s) if name == JUDGE else train_once(name, root, tokenizer_path)
    rows.append(run_one(name, workdir, train_s, judge))
    seconds = time.time() - start
    with open(os.path.join(RESULTS.value, "text_steps.json"), "w") as f:
      json.dump({"command": command, "wall_s": seconds, "rows": rows}, f, indent=1, default=str)
    write_table(rows, os.path.join(RESULTS.value, "text_steps.md"), command, seconds)
  write_plot(rows, os.path.join(RESULTS.value, "text_steps.png"))


if __name__ == "__main__":
  app.run(main, flags_parser=parser("experiments.text_steps"))
