"""Sudoku solving vs sampling budget: MDLM, VMD, VADD and sequential Co-/Di-LADD, with the
latent-first methods' choice of latent (issue 10, items 3 and 5).

    python -m experiments.sudoku_nfe --workdir=/work/expdirs/sudoku/nfe

Trains every model on complete solutions (CPU-sized: `cpu_sized`), then samples the same
fixed held-out puzzles (ladd.evaluation.sudoku_report: clues clamped, blanks generated) at
each token step count N and reports the fraction solved exactly, with the NFE each sampler
actually used. Latents drawn before any token: VMD from the prior or resampled by the
clues' likelihood (`latent_candidates` extra calls); sequential LADD from the prior (N_y
latent steps) or from the encoder of the clues (one call). Writes
experiments/results/sudoku_nfe.md, .json and .png.
"""

import json
import os
import sys
import time

from absl import app, flags

from configs import sudoku as sudoku_configs
from ladd.evaluation import sudoku_report
from ladd.flags import WORKDIR, parser
from ladd.job import load_trained
from ladd.train_loop import train

RESULTS = flags.DEFINE_string("results_dir", "experiments/results", "Where the table, JSON and plot go.")
TRAIN_STEPS = flags.DEFINE_integer("train_steps", 300, "Training steps per model.")
PUZZLES = flags.DEFINE_integer("puzzles", 128, "Held-out puzzles per (model, clues, N).")
CLUES = flags.DEFINE_list("clues", ["36", "70"], "Clues per puzzle (one set of puzzles per count).")
STEPS = flags.DEFINE_list("sampling_steps", ["5", "10", "20"], "Token steps N.")
CANDIDATES = flags.DEFINE_integer("vmd_candidates", 4, "VMD latent_init=resample: prior draws weighed by the clues (one call each).")
ONLY = flags.DEFINE_list("only_runs", [], "Train/evaluate only these runs (names as in RUNS).")

# name -> (configs/sudoku.py variant, latent inits, N_y). Sequential LADD's prior latent takes
# N_y latent steps (Co-LADD's g_psi is a small network over one slot: 4 DDIM steps, as in
# experiments/binsaw_steps.py; Di-LADD's single code needs one masked step); the encoder
# latent costs one encoder call instead.
RUNS = {
    "mdlm": ("mdlm", ("prior",), None),
    "co_ladd/sequential": ("co_ladd", ("prior", "encoder"), 4),
    "vmd": ("vmd", ("prior", "resample"), None),
    "di_ladd/sequential": ("di_ladd", ("prior", "encoder"), 1),
    "vadd": ("vadd", ("prior",), None),
}


def ints(flag):
  return [int(v) for v in flag.value]


def cpu_sized(config):
  """Shared by every run so backbones match: small enough for 2 busy CPU cores."""
  steps = TRAIN_STEPS.value
  config.model.update(d_model=64, n_layers=2, n_heads=4, cond_dim=32)
  config.data.update(batch_size=32, eval_batch_size=64)
  config.optim.update(lr=2e-3, warmup_steps=min(100, steps // 10))
  config.vae.update(kl_anneal_steps=steps // 2)
  config.train.update(steps=steps, eval_every=steps, checkpoint_every=steps, log_every=max(steps // 5, 1))
  return config


def run_one(name, root):
  variant, inits, latent_steps = RUNS[name]
  config = cpu_sized(sudoku_configs.get_config(variant))
  workdir = os.path.join(root, name.replace("/", "_"))
  start = time.time()
  train(config, workdir)
  train_s = time.time() - start
  # raw parameters: after a few hundred steps the EMA (decay 0.999) is still mostly the initialisation
  job, step, params, model_state = load_trained(workdir, which="raw")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f if '"loss"' in line][-1]
  row = {"name": name, "train_s": train_s, "checkpoint_step": int(step), "final_loss": last["loss"],
         "describe": job.method.describe(), "results": {}}
  for init in inits:
    overrides = {"latent_init": init}
    if latent_steps:
      overrides["latent_steps"] = latent_steps
    if init == "resample":
      overrides["latent_candidates"] = CANDIDATES.value
    for clues in ints(CLUES):
      report, _ = sudoku_report(job, params, model_state, ints(STEPS), PUZZLES.value, clues, **overrides)
      row["results"][f"{init}/{clues}"] = report
      for n, m in report["by_steps"].items():
        print(f"{name} {init} clues={clues} N={n} NFE={m['sampler']['nfe']:g}: solved {m['sudoku_solved']:.3f}"
              f" valid {m['sudoku_valid']:.3f} cells {m['sudoku_cells_correct']:.3f}", flush=True)
  row["eval_s"] = time.time() - start - train_s
  return row


def cell(m):
  return (f"{100 * m['sudoku_solved']:.1f} ({100 * m['sudoku_valid']:.0f}, {100 * m['sudoku_cells_correct']:.0f})"
          f" [{m['sampler']['nfe']:g}]")


def write_table(rows, path, command, seconds):
  steps = ints(STEPS)
  lines = [
      "# Sudoku: boards solved vs sampling budget", "",
      f"Command: `{command}` ({seconds / 60:.1f} min wall on this machine, 2 CPU cores shared with other jobs).", "",
      f"Every model: d_model 64, 2 layers, 4 heads, batch 32, {TRAIN_STEPS.value} training steps"
      f" (`experiments/sudoku_nfe.py` cpu_sized on configs/sudoku.py), trained on complete solutions; sampled with the raw (not EMA) parameters."
      f" {PUZZLES.value} held-out puzzles per clue count (unique solution; made from the eval split's"
      " grid pool, which training never sees), the clues clamped, sampled once each at N token steps"
      " (temperature 1, final fill by sampling). Cell: **% solved exactly** (% valid grids, % of blank"
      " cells holding the solution's digit) [NFE the sampler used: token-network calls + latent"
      f" calls]. VMD resample: {CANDIDATES.value} prior draws weighed by the clues' likelihood"
      " (that many extra calls). Sequential LADD prior: N_y latent steps ("
      + ", ".join(f"{n} {ny}" for n, (_, _, ny) in RUNS.items() if ny) + "); encoder: one encoder call"
      " on the clues. A uniform guess gets 11% of cells.", "",
      "| method | latent | clues | " + " | ".join(f"N={n}" for n in steps) + " |",
      "|---|---|---|" + "---|" * len(steps),
  ]
  for row in rows:
    for key, report in row["results"].items():
      init, clues = key.split("/")
      cells = [cell(report["by_steps"][n]) for n in steps]
      lines.append(f"| {row['name']} | {init} | {clues} | " + " | ".join(cells) + " |")
  lines += ["", "Training loss at the last logged step (the method's objective on a training batch, nats"
            " per token; log 9 = 2.20 for a uniform model): "
            + "; ".join(f"{r['name']} {r['final_loss']:.3f}" for r in rows),
            "", "Time per model (train / evaluate): "
            + ", ".join(f"{r['name']} {r['train_s'] / 60:.1f} / {r['eval_s'] / 60:.1f} min" for r in rows)]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def write_plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  clue_counts = ints(CLUES)
  fig, axes = plt.subplots(1, len(clue_counts), figsize=(5 * len(clue_counts), 4), squeeze=False)
  for ax, clues in zip(axes[0], clue_counts):
    for row in rows:
      for key, report in row["results"].items():
        init, c = key.split("/")
        if int(c) != clues:
          continue
        points = sorted(report["by_steps"].values(), key=lambda m: m["sampler"]["nfe"])
        ax.plot([m["sampler"]["nfe"] for m in points], [100 * m["sudoku_cells_correct"] for m in points],
                marker="o", label=f"{row['name']} ({init})")
    ax.set_xlabel("NFE")
    ax.set_ylabel("% blank cells correct")
    ax.set_title(f"Sudoku, {clues} clues")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  del argv
  start = time.time()
  root = os.path.abspath(WORKDIR.value or "/tmp/sudoku_nfe")
  os.makedirs(RESULTS.value, exist_ok=True)
  command = ("python -m experiments.sudoku_nfe " + " ".join(sys.argv[1:])).strip()
  rows = []
  for name in ONLY.value or list(RUNS):  # the files are rewritten after every model
    rows.append(run_one(name, root))
    seconds = time.time() - start
    with open(os.path.join(RESULTS.value, "sudoku_nfe.json"), "w") as f:
      json.dump({"command": command, "wall_s": seconds, "rows": rows}, f, indent=1, default=str)
    write_table(rows, os.path.join(RESULTS.value, "sudoku_nfe.md"), command, seconds)
  write_plot(rows, os.path.join(RESULTS.value, "sudoku_nfe.png"))


if __name__ == "__main__":
  app.run(main, flags_parser=parser("experiments.sudoku_nfe"))
