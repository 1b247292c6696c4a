"""Sample quality vs sampling steps on binsaw: MDLM against Co-/Di-LADD (joint and
sequential schedules), scored by the exact density (method.md §5).

    python -m experiments.binsaw_steps --workdir=/tmp/binsaw_steps

Trains every model (CPU-sized), then for N in STEPS draws samples and reports their mean
true NLL (nats/sequence) next to the data entropy, with the NFE of each number, and each
model's held-out NELBO. Writes experiments/results/binsaw_steps.md and .png.
"""

import json
import os
import sys
import time

from absl import app, flags

from configs import binsaw, ladd_binsaw
from ladd import summary
from ladd.flags import WORKDIR, parser
from ladd.diffusion.sampling import SamplerSettings
from ladd.evaluation import evaluate, nstep_bounds
from ladd.job import load_trained
from ladd.generate import sample
from ladd.train_loop import train

RESULTS = flags.DEFINE_string("results_dir", "experiments/results", "Where the table and plot go.")
TRAIN_STEPS = flags.DEFINE_integer("train_steps", 1200, "Training steps per model.")
NUM_SAMPLES = flags.DEFINE_integer("samples_per_point", 64, "Samples per (model, N).")
ONLY = flags.DEFINE_list("only_runs", [], "Train/evaluate only these runs (names as in RUNS).")
STEPS = flags.DEFINE_list("sampling_steps", ["1", "2", "4", "8", "16", "32", "128"], "Token steps N.")
LEADS = flags.DEFINE_list("latent_leads", [], "One joint-schedule row per latent.lead c (the latent leads the"
                          " tokens, clean from u = c on); none: the configs' own path.")

UNIFORM_BITS_NLL = 112.0  # method.md §5: what a one-step factorised sampler emits

# name -> (config, N_y). Sequential LADD spends N_y latent steps before the N_x token steps:
# Co-LADD's g_psi is a 2-layer d=64 network over ONE slot (negligible next to the token
# network), run for 4 DDIM steps (1 step costs ~1.4 nats more, 32 steps gain nothing);
# Di-LADD's single code needs one masked step.
RUNS = {
    "co_ladd/sequential": (lambda: ladd_binsaw.get_config("co_seq"), 4),
    "di_ladd/sequential": (lambda: ladd_binsaw.get_config("di_seq"), 1),
    "co_ladd/joint": (lambda: ladd_binsaw.get_config("co_joint"), None),
    "di_ladd/joint": (lambda: ladd_binsaw.get_config("di_joint"), None),
    "mdlm": (lambda: binsaw.get_config(), None),
}


def steps_list():
  return [int(n) for n in STEPS.value]


def cpu_sized(config):
  """Shared by every run so backbones match: small enough for 2 busy CPU cores."""
  config.model.update(d_model=64, n_layers=2, n_heads=4, cond_dim=32)
  config.data.update(batch_size=32)
  return config


def run_one(name, make_config, latent_steps, root, lead=None):
  config = cpu_sized(make_config())
  if lead is not None:
    config.latent.update(lead=lead)
    name = f"{name} lead={lead:g}"
  config.train.update(steps=TRAIN_STEPS.value, eval_every=TRAIN_STEPS.value, checkpoint_every=TRAIN_STEPS.value,
                      log_every=max(TRAIN_STEPS.value // 5, 1))
  workdir = os.path.join(root, name.replace("/", "_").replace(" lead=", "_lead"))
  start = time.time()
  train(config, workdir)
  train_s = time.time() - start
  job, step, params, model_state = load_trained(workdir)
  ev = evaluate(job, params, model_state, num_batches=16, t_samples=4, seed=0)
  row = {"name": name, "train_s": train_s, "nelbo": ev["nelbo_per_sequence"], "kinds": ev["kinds"],
         "elbo_x": ev.get("elbo_x_per_sequence"), "elbo_y": ev.get("elbo_y_per_sequence"),
         "entropy": ev["exact_entropy_per_sequence"], "bound": job.method.describe()["bound"],
         "steps": {}}
  bounds = nstep_bound_column(job, params, model_state, latent_steps)
  for n in steps_list():
    settings = SamplerSettings(steps=n, latent_steps=latent_steps or 0)
    tokens, nfe = sample(job, params, model_state, settings, NUM_SAMPLES.value, NUM_SAMPLES.value, seed=1)
    true_nll = float((-job.dataset.exact.log_prob(tokens)).mean())
    row["steps"][n] = {"true_nll": true_nll, "nfe": nfe, "nstep_bound": bounds.get(n)}
    print(f"{name}: N={n} NFE={nfe:g} true NLL {true_nll:.1f}", flush=True)
  return row


def nstep_bound_column(job, params, model_state, latent_steps):
  """{N: held-out N-step bound of the N-step sampler, nats/sequence} ({} where the method has
  none: deterministic Co-LADD), over 4 held-out batches."""
  if not job.method.has_nstep_bound:
    return {}
  report, _ = nstep_bounds(job, params, model_state, steps_list(), num_batches=4, seed=0, latent_steps=latent_steps or 0)
  return {int(n): entry["nelbo_per_sequence"] for n, entry in report.items()}


def write_table(rows, path, command, seconds):
  entropy = rows[0]["entropy"]
  lines = [
      "# binsaw: sample quality vs sampling steps", "",
      f"Command: `{command}` ({seconds / 60:.1f} min on this machine).", "",
      f"binsaw L=128, K=2 saws, s=0.01. Data entropy (exact) **{entropy:.1f}** nats/sequence; "
      f"uniform random bits score ~{UNIFORM_BITS_NLL:.0f}. Each cell: mean exact NLL of "
      f"{NUM_SAMPLES.value} samples under the true density (nats/sequence), NFE in brackets "
      "and the held-out N-step bound of that N-step sampler (method.md §7; nats/sequence, 4 batches, "
      "none where the method has no density) "
      "(sequential: token-network calls + latent calls; N_y = "
      + ", ".join(f"{name} {ny}" for name, (_, ny) in RUNS.items() if ny) + "). The continuous-time NELBO (elbo_x + elbo_y) is a bound on -log p(x0) "
      "unless marked †: † = a training objective, not a bound (ladd.summary; method.md §7).", "",
      "| method / schedule | continuous NELBO (elbo_x + elbo_y) | " + " | ".join(f"N={n}" for n in steps_list()) + " |",
      "|---|---|" + "---|" * len(steps_list()),
  ]
  for row in rows:
    nelbo = summary.mark(row["nelbo"], row["kinds"]["nelbo"] == "bound")
    if row["elbo_y"] is not None:
      nelbo += f" ({row['elbo_x']:.1f} + {row['elbo_y']:.1f})"
    cells = []
    for n in steps_list():
      cell = row["steps"][n]
      bound = "" if cell.get("nstep_bound") is None else f", bound {cell['nstep_bound']:.1f}"
      cells.append(f"{cell['true_nll']:.1f} ({cell['nfe']:g}{bound})")
    lines.append(f"| {row['name']} | {nelbo} | " + " | ".join(cells) + " |")
  lines += ["", "Bounds: " + "; ".join(f"{r['name']}: {r['bound']}" for r in rows),
            "", "Training time per model: " + ", ".join(f"{r['name']} {r['train_s'] / 60:.1f} min" for r in rows)]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def write_plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for row in rows:
    ax.plot(steps_list(), [row["steps"][n]["true_nll"] for n in steps_list()], marker="o", label=row["name"])
  ax.axhline(rows[0]["entropy"], color="k", ls="--", lw=1, label="data entropy")
  ax.axhline(UNIFORM_BITS_NLL, color="gray", ls=":", lw=1, label="uniform bits")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("token sampling steps N (N_x)")
  ax.set_ylabel("mean true NLL of samples (nats/seq)")
  ax.set_title("binsaw L=128: sample quality vs steps")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  start = time.time()
  root = os.path.abspath(WORKDIR.value or "/tmp/binsaw_steps")
  names = ONLY.value or list(RUNS)
  leads = [float(c) for c in LEADS.value]
  rows = []
  for name in names:
    joint = name.endswith("/joint")
    for lead in (leads if joint and leads else [None]):
      rows.append(run_one(name, RUNS[name][0], RUNS[name][1], root, lead))
  os.makedirs(RESULTS.value, exist_ok=True)
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(rows, f, indent=1)
  command = "python -m experiments.binsaw_steps " + " ".join(sys.argv[1:])
  write_table(rows, os.path.join(RESULTS.value, "binsaw_steps.md"), command.strip(), time.time() - start)
  write_plot(rows, os.path.join(RESULTS.value, "binsaw_steps.png"))


if __name__ == "__main__":
  app.run(main, flags_parser=parser("experiments.binsaw_steps"))
