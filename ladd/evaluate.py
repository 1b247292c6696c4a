"""Held-out likelihood bound of a checkpoint: `python -m ladd.evaluate --workdir=DIR`.

Prints one JSON object (also written to `<workdir>/eval.json`): the continuous-time
NELBO per token and per sequence (and any further terms the method's `nelbo` returns,
e.g. elbo_x / elbo_y for latent methods), "kinds" (what each is: bound, objective or
diagnostic, from the method), and only where it is a bound the perplexity bound
exp(NELBO/token), bits per token and bits per character for text (ladd.summary), and the
estimator used; with `--bound_steps=N[,N...]` also the N-step bound of the N-step
sampler at each N (one printed line each, and "nstep_bounds"). Sources with a known joint (toys) also
get exact sample metrics at each `--sample_steps` count and `<workdir>/exact_densities.png`.
The autoregressive method's NELBO is its exact NLL: it reports `ppl`, a true perplexity.

`--data=PATH` evaluates on another corpus (zero-shot) with the checkpoint's tokenizer and
reports what that tokenizer could not represent; `--samples=FILE --judge=WORKDIR` scores
generated text instead (ladd/text_metrics.py), written to FILE's stem + `.metrics.json`.
"""

import dataclasses
import json
import os

import jax
from absl import app
from absl import flags as absl_flags

from ladd import checkpoint, exact_metrics, flags, nstep_bound, summary
from ladd.metrics import progress
from ladd.data.zero_shot import zero_shot_dataset
from ladd.diffusion.sampling import SamplerSettings
from ladd.errors import one_line_errors
from ladd.job import load_trained
from ladd.generate import sample
from ladd.trainer import evaluate_nelbo

NUM_BATCHES = absl_flags.DEFINE_integer("num_batches", None, "Held-out batches (default: config eval.num_batches; 0 = whole split).")
T_SAMPLES = absl_flags.DEFINE_integer("t_samples", None, "Time samples per sequence (default: config eval.t_samples).")
SEED = absl_flags.DEFINE_integer("seed", None, "Estimator seed (default: config eval.seed).")
STEP = absl_flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step to load (default: newest).")
PARAMS = absl_flags.DEFINE_enum("params", "ema", ["ema", "raw"], "EMA or raw parameters.")
OUTPUT = absl_flags.DEFINE_string("output", "", "Output JSON (default: <workdir>/eval.json; with --data: <workdir>/eval_<data name>.json).")
SAMPLES = absl_flags.DEFINE_string("samples", "", "Score this ladd.sample JSONL file (gen-PPL under --judge, entropy, repeated n-grams) instead of a checkpoint's held-out likelihood.")
DATA = absl_flags.DEFINE_string("data", "", "Zero-shot: evaluate on this .txt file or directory (or prepared shards' eval split) with the checkpoint's tokenizer instead of its own held-out split.")
JUDGE = absl_flags.DEFINE_string("judge", "", "With --samples: work directory of an autoregressive (method 'ar') checkpoint, or a local GPT-2 directory (config.json + model.safetensors).")
BOUND_STEPS = absl_flags.DEFINE_list("bound_steps", [], "Step counts N for the N-step bound of the N-step sampler (e.g. 1,4,16); none by default.")
SAMPLE_STEPS = absl_flags.DEFINE_list("sample_steps", ["1", "2", "5", "10"], "Step counts for the exact sample metrics of sources with a known joint (toys).")


def estimator(method, t_samples, seed):
  if method.quantities["nelbo"] == "exact":
    return {"kind": "exact NLL, left to right"}
  return {"kind": "continuous-time NELBO with end terms, one stratified t per sequence per draw",
          "schedule": method.schedule.kind, "t_samples": t_samples, "seed": seed}


def evaluate(job, params, model_state, num_batches, t_samples, seed):
  if t_samples < 1:
    raise ValueError(f"--t_samples must be >= 1, got {t_samples}")
  local = job.config.data.eval_batch_size // jax.process_count()
  batches = list(job.dataset.eval_batches(jax.process_index(), jax.process_count(), local, num_batches or None))
  totals = evaluate_nelbo(job.trainer, params, model_state, progress(batches, len(batches), "held-out batches"),
                          seed, t_samples)
  result = summary.summarize(totals, job.method.quantities, job.dataset.chars_per_token)
  result.update({
      "vocab_size": job.dataset.vocab_size,
      "estimator": dict(estimator(job.method, t_samples, seed), split="held-out",
                        sequences=totals["sequences"], tokens=totals["tokens"]),
  })
  if job.dataset.exact is not None:
    result["exact_entropy_per_sequence"] = job.dataset.exact.entropy()
  return result


def parse_steps(values, flag):
  try:
    return [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{flag} must be a comma-separated list of integers, got {','.join(values)!r}") from None


def nstep_bounds(job, params, model_state, steps_list, num_batches, seed, latent_steps=None):
  """({"N": metrics}, printed lines) of the N-step bound at each N on the held-out split;
  sequential LADD's N_y is `latent_steps`, by default config sample.latent_steps as in `ladd.sample`."""
  local = job.config.data.eval_batch_size // jax.process_count()
  batches = job.dataset.eval_batches(jax.process_index(), jax.process_count(), local, num_batches or None)
  latent_steps = job.config.sample.latent_steps if latent_steps is None else latent_steps
  totals = nstep_bound.evaluate_nstep_bounds(job.trainer, job.method, params, model_state, batches, seed,
                                             steps_list, latent_steps)
  return nstep_bound.nstep_report(totals, job.method, job.dataset.chars_per_token, latent_steps, seed)


def exact_sample_metrics(job, params, model_state, sample_steps, seed, plot_path=None):
  """Sources with a known joint: JS (2D toys) or KL and TV (dependency tasks) of
  config eval.exact_samples samples at each step count, and the sample histograms.

  Returns ({steps: {metric: value, "nfe": ...}}, {steps: sample distribution}); with
  `plot_path`, 2D toys also get a PNG of the true and generated densities.
  """
  exact, cfg = job.dataset.exact, job.config
  settings_fields = {f.name for f in dataclasses.fields(SamplerSettings)} & set(cfg.sample)
  base = SamplerSettings(**{name: cfg.sample[name] for name in settings_fields})
  num_samples = cfg.eval.exact_samples
  metrics, distributions = {}, {}
  for steps in progress(sample_steps, len(sample_steps), "exact sample metrics (step counts)"):
    settings = dataclasses.replace(base, steps=steps)
    tokens, nfe = sample(job, params, model_state, settings, num_samples, num_samples, seed)
    metrics[steps] = dict(exact_metrics.sample_metrics(tokens, exact.probs, exact.metrics, cfg.eval.exact_bins), nfe=nfe)
    distributions[steps] = exact_metrics.normalised(exact_metrics.sample_counts(tokens, exact.probs.shape))
  if plot_path and "js" in exact.metrics:
    plot_2d_densities(exact.probs, {job.method.name: distributions}, plot_path)
  return metrics, distributions


def plot_2d_densities(truth, rows, path):
  """One row per label in `rows` ({label: {steps: [B, B] probs}}): the true density, then
  the generated one at each step count."""
  try:
    import matplotlib  # plotting only happens here; keep the import off the common path
  except ImportError as e:
    raise ValueError("plotting 2D densities needs matplotlib: pip install -e '.[plots]'") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = max(len(by_steps) for by_steps in rows.values()) + 1
  fig, axes = plt.subplots(len(rows), columns, figsize=(2 * columns, 2 * len(rows)), squeeze=False)
  for row, (label, by_steps) in zip(axes, rows.items()):
    panels = [("true", truth)] + [(f"{label}, {steps} step{'s' * (steps != 1)}", probs) for steps, probs in by_steps.items()]
    for ax, (title, probs) in zip(row, panels):
      ax.imshow(probs.T, origin="lower", cmap="magma", vmin=0, vmax=truth.max())
      ax.set_title(title, fontsize=7)
    for ax in row:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def score_samples(samples_path, judge_workdir, output):
  """--samples mode: the metrics JSON beside the samples (or at --output)."""
  from ladd import text_metrics
  if not judge_workdir:
    raise ValueError("--samples needs --judge=WORKDIR of an autoregressive (method 'ar')"
                     " checkpoint or a GPT-2 safetensors directory")
  records = text_metrics.read_samples(samples_path)
  judge = text_metrics.load_judge(os.path.abspath(judge_workdir), STEP.value)
  result = dict(text_metrics.sample_metrics(records, judge), samples_file=os.path.abspath(samples_path))
  if jax.process_index() == 0:
    checkpoint.write_json(output or os.path.splitext(samples_path)[0] + ".metrics.json", result)
    print(json.dumps(result, indent=2), flush=True)


def main(argv):
  del argv
  with one_line_errors("ladd.evaluate"):
    flags.start_distributed()
    if SAMPLES.value:
      score_samples(SAMPLES.value, JUDGE.value, OUTPUT.value)
      return
    bound_steps = parse_steps(BOUND_STEPS.value, "bound_steps")
    nstep_bound.check_steps(bound_steps)  # before the (slow) checkpoint load
    job, step, params, model_state = load_trained(flags.WORKDIR.value, STEP.value, PARAMS.value)
    workdir = os.path.abspath(flags.WORKDIR.value)
    zero_shot = None
    if DATA.value:
      job.dataset, zero_shot = zero_shot_dataset(job.dataset, DATA.value)
    cfg = job.config.eval
    num_batches = cfg.num_batches if NUM_BATCHES.value is None else NUM_BATCHES.value
    seed = cfg.seed if SEED.value is None else SEED.value
    result = evaluate(job, params, model_state, num_batches, T_SAMPLES.value or cfg.t_samples, seed)
    bound_lines = []
    if bound_steps:
      result["nstep_bounds"], bound_lines = nstep_bounds(job, params, model_state, bound_steps, num_batches, seed)
    if job.dataset.exact is not None and job.dataset.exact.metrics:  # a table to score samples against
      steps = [int(s) for s in SAMPLE_STEPS.value]
      plot = os.path.join(workdir, "exact_densities.png") if jax.process_index() == 0 else None
      result["exact_sample_metrics"], _ = exact_sample_metrics(job, params, model_state, steps, job.config.sample.seed, plot)
    result = dict(job.method.describe(), checkpoint_step=int(step), params=PARAMS.value, **result)
    if zero_shot:
      result["zero_shot"] = zero_shot
    if jax.process_index() == 0:
      default = f"eval_{os.path.splitext(os.path.basename(os.path.normpath(DATA.value)))[0]}.json" if DATA.value else "eval.json"
      checkpoint.write_json(OUTPUT.value or os.path.join(workdir, default), result)
      for line in bound_lines:  # before the JSON, which ends the output
        print(line)
      print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=flags.parser("ladd.evaluate"))
