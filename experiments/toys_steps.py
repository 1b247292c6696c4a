"""Few-step sampling on toys with an exact answer (method.md §5): every registered method
among MDLM, VADD, VMD, Co-LADD and Di-LADD is trained on the checkerboard and on four
dependency tasks (copy, parity, mixture, product) and scored at 1, 2, 5 and 10 sampling steps.

  python experiments/toys_steps.py [--out=experiments/results] [--train_steps=N] [--workdir=DIR]

With --workdir the trained runs stay in DIR/<method>_<task>; a later invocation with the
same DIR resumes them (ladd.train_loop.train restarts from the newest checkpoint, so a finished
run trains no further) and only re-evaluates. Without it they live in a temporary directory.

Writes `toys_steps.md` (table, command, timings, latent diagnostics), `toys_steps.json`,
`toys_steps_metrics.png` (metric against steps) and `toys_steps_checkerboard.png`
(generated against true densities) into --out. Two reference rows need no model:
"data samples" (the same number of samples drawn from the truth: the estimator's floor)
and "product of marginals" (the best any factorised one-step sampler can do, exactly).
"""

import contextlib
import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from configs import toys as toy_configs  # noqa: E402
from ladd import exact_metrics, summary  # noqa: E402
from ladd.data import toys  # noqa: E402
from ladd.evaluation import evaluate, exact_sample_metrics, nstep_bounds, plot_2d_densities  # noqa: E402
from ladd.flags import WORKDIR, parser  # noqa: E402  --workdir: keep the runs there (default: a temporary directory)
from ladd.job import build_job  # noqa: E402
from ladd.methods import METHODS  # noqa: E402
from ladd.train_loop import train  # noqa: E402

CANDIDATES = ("mdlm", "vadd", "vmd", "co_ladd", "di_ladd")
TASKS = ("checkerboard", "copy", "parity", "mixture", "product")
STEP_COUNTS = (1, 2, 5, 10)
LATENT_DIAGNOSTICS = ("kl_per_sequence", "active_latent_dims", "kl_weight")
EVAL_T_SAMPLES = 4  # t draws per held-out sequence for the continuous-time NELBO

OUT = flags.DEFINE_string("out", "experiments/results", "Directory for the table and plots.")
TRAIN_STEPS = flags.DEFINE_integer("train_steps", None, "Training steps per run (default: configs/toys.py).")
SEED = 0


def product_of_marginals(probs):
  """The joint of independent positions with the true marginals: a perfect factorised model."""
  axes = range(probs.ndim)
  marginals = [probs.sum(tuple(a for a in axes if a != i)) for i in axes]
  table = marginals[0]
  for marginal in marginals[1:]:
    table = np.multiply.outer(table, marginal)
  return table


def reference_rows(config):
  _, exact = toys.toy_task(config.data)
  data = exact.sample(np.random.default_rng(SEED), config.eval.exact_samples)
  floor = exact_metrics.sample_metrics(data, exact.probs, exact.metrics, config.eval.exact_bins)
  product = product_of_marginals(exact.probs)
  bins = config.eval.exact_bins
  pool = (lambda h: exact_metrics.pool_2d(h, bins)) if "js" in exact.metrics else (lambda h: h)
  factorised = {"js": exact_metrics.js_divergence(pool(product), pool(exact.probs)),
                "kl": exact_metrics.kl_divergence(exact.probs, product),
                "tv": exact_metrics.total_variation(product, exact.probs)}
  return exact, {"data samples": {s: floor for s in STEP_COUNTS},
                 "product of marginals (exact)": {1: {m: factorised[m] for m in exact.metrics}}}


def last_training_record(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {k: records[-1][k] for k in LATENT_DIAGNOSTICS if k in records[-1]}


def run(method, task, workroot):
  config = toy_configs.get_config(f"{method},{task}")
  if TRAIN_STEPS.value:
    config.train.steps = TRAIN_STEPS.value
  workdir = os.path.join(workroot, f"{method}_{task}")
  timing_path = os.path.join(workdir, "toys_steps_train_seconds.json")
  start = time.time()
  state = train(config, workdir)
  if os.path.exists(timing_path):  # resumed a run an earlier invocation finished: report its time
    with open(timing_path) as f:
      train_seconds = json.load(f)
  else:
    train_seconds = time.time() - start
    with open(timing_path, "w") as f:
      json.dump(train_seconds, f)
  job = build_job(config, workdir)
  metrics, distributions = exact_sample_metrics(job, state["ema"], state["model_state"], STEP_COUNTS, SEED)
  ev = evaluate(job, state["ema"], state["model_state"], config.eval.num_batches, EVAL_T_SAMPLES, SEED)
  return {"metrics": metrics, "distributions": distributions, "train_seconds": train_seconds,
          "nstep_bounds": nstep_bound_row(job, state["ema"], state["model_state"]),
          "nelbo": {k: v for k, v in ev.items() if k.endswith("_per_sequence") or k == "kinds"},
          "exact_entropy": ev.get("exact_entropy_per_sequence"),
          "total_seconds": time.time() - start, "diagnostics": last_training_record(workdir),
          "train_steps": config.train.steps, "train_loss": config.diffusion.train_loss}


def nstep_bound_row(job, params, model_state):
  """{steps: held-out N-step bound of that sampler, nats/sequence} ({} where the method has no
  density: deterministic Co-LADD), over config eval.num_batches batches."""
  if not job.method.has_nstep_bound:
    return {}
  report, _ = nstep_bounds(job, params, model_state, list(STEP_COUNTS), job.config.eval.num_batches, SEED)
  return {int(n): entry["nelbo_per_sequence"] for n, entry in report.items()}


def fmt(value):
  return "" if value is None else f"{value:.3f}"


def markdown(results, references, methods, failures, command, total_minutes):
  lines = [
      "# Few-step sampling on toys with an exact answer", "",
      f"Command: `{command}`", "",
      f"Methods included (registered when run): {', '.join(methods)}."
      f" Not registered, so left out: {', '.join(m for m in CANDIDATES if m not in methods) or 'none'}.",
      f"Wall time {total_minutes:.1f} min on a shared 2-core CPU.", "",
      "Metrics (nats; lower is better) of 20000 samples against the exact joint:"
      " checkerboard: Jensen-Shannon divergence on 32 x 32 pooled bins of the 128 x 128 grid"
      " (at most log 2 = 0.693); copy (V = 8, p = 0.9), parity (L = 4), mixture (4 products,"
      " L = 4, V = 4) and product (L = 4, V = 4; every position its own marginal):"
      " KL(truth || samples) with a 0.5 pseudo-count, and total variation. 'data samples' is the same number of"
      " draws from the truth (the estimator's floor); 'product of marginals' is exact and is"
      " what a perfect factorised model emits in one step. NFE = steps + 1.", ""]
  for task in TASKS:
    exact_metric_names = references[task][0].metrics
    header = [f"{m}@{s}" for m in exact_metric_names for s in STEP_COUNTS]
    lines += [f"## {task}", "", "| method | " + " | ".join(header) + " |",
              "|---" * (len(header) + 1) + "|"]
    rows = dict(references[task][1])
    rows.update({m: results[task][m]["metrics"] for m in methods if m in results[task]})
    for name, by_steps in rows.items():
      cells = [fmt(by_steps.get(s, {}).get(m)) for m in exact_metric_names for s in STEP_COUNTS]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += ["## Held-out NELBO (nats/sequence)", "",
            f"Continuous-time NELBO with its end terms ({EVAL_T_SAMPLES} t draws per sequence), and the held-out"
            " N-step bound of the N-step sampler (method.md §7; blank where the method has no density);"
            " † marks a number that is not a bound on -log p(x0) (a training"
            " objective: VADD's double ELBO, VMD with q(z | x0, x_t), Co-LADD with a deterministic"
            " encoder; ladd.summary). Exact entropy: the data's, the floor of every bound.", "",
            "| task | method | exact entropy | continuous NELBO | " + " | ".join(f"N-step bound N={s}" for s in STEP_COUNTS) + " |",
            "|---|---|---|---|" + "---|" * len(STEP_COUNTS)]
  for task in TASKS:
    for m in filter(results[task].__contains__, methods):
      ev = results[task][m]["nelbo"]
      cell = lambda name: (summary.mark(ev[f"{name}_per_sequence"], ev["kinds"][name] == "bound", 3)
                           if f"{name}_per_sequence" in ev else "")
      lines.append(f"| {task} | {m} | {fmt(results[task][m]['exact_entropy'])} | {cell('nelbo')} | "
                   + " | ".join(fmt(results[task][m]["nstep_bounds"].get(s)) for s in STEP_COUNTS) + " |")
  lines += ["", "## Training and latent diagnostics", "",
            "| task | method | train loss | train steps | train s | total s | KL/sequence | active latent dims | lambda |",
            "|---|---|---|---|---|---|---|---|---|"]
  for task in TASKS:
    for m in filter(results[task].__contains__, methods):
      r = results[task][m]
      d = r["diagnostics"]
      lines.append(f"| {task} | {m} | {r['train_loss']} | {r['train_steps']} | {r['train_seconds']:.0f} | {r['total_seconds']:.0f} |"
                   f" {fmt(d.get('kl_per_sequence'))} | {fmt(d.get('active_latent_dims'))} | {fmt(d.get('kl_weight'))} |")
  if failures:
    lines += ["", "Runs that failed (left out above): " + "; ".join(failures)]
  return "\n".join(lines) + "\n"


def plot_metrics(results, references, methods, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(TASKS), figsize=(4 * len(TASKS), 3.2))
  for ax, task in zip(axes, TASKS):
    metric = references[task][0].metrics[0]
    for m in filter(results[task].__contains__, methods):
      ax.plot(STEP_COUNTS, [results[task][m]["metrics"][s][metric] for s in STEP_COUNTS], "o-", label=m)
    floor = references[task][1]["data samples"][1][metric]
    ax.axhline(floor, color="gray", ls=":", label="data samples")
    ax.set_xscale("log")
    ax.set_xticks(STEP_COUNTS, [str(s) for s in STEP_COUNTS])
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(metric)
    ax.set_title(task)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  start = time.time()
  methods = [m for m in CANDIDATES if m in METHODS]
  os.makedirs(OUT.value, exist_ok=True)
  results, references, failures = {}, {}, []
  with (contextlib.nullcontext(os.path.abspath(WORKDIR.value)) if WORKDIR.value else tempfile.TemporaryDirectory()) as workroot:
    for task in TASKS:
      references[task] = reference_rows(toy_configs.get_config(f"mdlm,{task}"))
      results[task] = {}
      for m in methods:
        try:
          results[task][m] = run(m, task, workroot)
        except Exception as e:  # noqa: BLE001  a method under development must not sink the others
          print(f"{task} {m} FAILED: {type(e).__name__}: {e}", flush=True)
          failures.append(f"{task}/{m}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
          continue
        print(f"{task} {m}: {results[task][m]['metrics']} {results[task][m]['diagnostics']}"
              f" ({results[task][m]['total_seconds']:.0f}s)", flush=True)
  command = "python experiments/toys_steps.py" + "".join(f" {a}" for a in sys.argv[1:])
  with open(os.path.join(OUT.value, "toys_steps.md"), "w") as f:
    f.write(markdown(results, references, methods, failures, command, (time.time() - start) / 60))
  serialisable = {task: {m: {k: v for k, v in r.items() if k != "distributions"} for m, r in by_method.items()}
                  for task, by_method in results.items()}
  with open(os.path.join(OUT.value, "toys_steps.json"), "w") as f:
    json.dump(serialisable, f, indent=1)
  plot_metrics(results, references, methods, os.path.join(OUT.value, "toys_steps_metrics.png"))
  plot_2d_densities(references["checkerboard"][0].probs,
                    {m: r["distributions"] for m, r in results["checkerboard"].items()},
                    os.path.join(OUT.value, "toys_steps_checkerboard.png"))
  print(open(os.path.join(OUT.value, "toys_steps.md")).read())


if __name__ == "__main__":
  app.run(main, flags_parser=parser("experiments.toys_steps"))
