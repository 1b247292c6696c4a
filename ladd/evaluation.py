"""Evaluating checkpoints and generated text (`ladd.evaluate`, `ladd.sweep`; a module without
absl flags, so experiments and tests call it directly): the held-out NELBO and what it
bounds, N-step bounds, exact sample metrics of sources with a known joint, and the text
metrics of samples under a judge, and the solve rate of Sudoku puzzles."""

import dataclasses
import functools
import json
import os

import jax

from ladd import checkpoint, exact_metrics, files, nstep_bound, summary
from ladd.config import default_config
from ladd.diffusion.sampling import SamplerSettings
from ladd.data import sudoku
from ladd.generate import draw_samples, sample
from ladd.job import load_trained
from ladd.metrics import progress
from ladd.trainer import evaluate_nelbo


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


def nstep_bounds(job, params, model_state, steps_list, num_batches, seed, latent_steps=None):
  """({"N": metrics}, printed lines) of the N-step bound at each N on the held-out split;
  sequential LADD's N_y is `latent_steps`, by default config sample.latent_steps as in `ladd.sample`."""
  local = job.config.data.eval_batch_size // jax.process_count()
  batches = job.dataset.eval_batches(jax.process_index(), jax.process_count(), local, num_batches or None)
  latent_steps = job.config.sample.latent_steps if latent_steps is None else latent_steps
  totals = nstep_bound.evaluate_nstep_bounds(job.trainer, job.method, params, model_state, batches, seed,
                                             steps_list, latent_steps)
  return nstep_bound.nstep_report(totals, job.method, job.dataset.chars_per_token, latent_steps, seed)


def configured_settings(sample_cfg, **overrides):
  """SamplerSettings from config `sample` (keys newer than a checkpoint's config take
  their defaults), with `overrides`."""
  names = {f.name for f in dataclasses.fields(SamplerSettings)} & set(sample_cfg)
  return SamplerSettings(**dict({name: sample_cfg[name] for name in names}, **overrides))


@functools.lru_cache(maxsize=8)  # pure-Python search, seconds per set: made once per process
def sudoku_puzzles(shuffle_seed, pool_size, count, clues):
  """(puzzles, solutions) [count, 81]: a fixed set made from the held-out split's grid pool
  (data.shuffle_seed and data.sudoku_pool, as the split), so training never saw their grids."""
  return sudoku.puzzles(shuffle_seed, count, clues, pool_size)


def solve_metrics(boards, puzzles, solutions):
  """Fractions of boards that solve their puzzle (`sudoku.solved`), that are valid grids,
  and of blank cells holding the (unique) solution's digit."""
  blanks = puzzles == sudoku.BLANK
  return {"sudoku_solved": float(sudoku.solved(boards, puzzles).mean()),
          "sudoku_valid": float(sudoku.is_valid(boards).mean()),
          "sudoku_cells_correct": float((boards == solutions)[blanks].mean())}


def sudoku_solve_rates(job, params, model_state, settings_list, puzzles, solutions, seed):
  """Sudoku solving: every puzzle sampled once with its clues clamped, per sampler setting.

  Returns a list of (metrics, boards [N, 81]) in the order of `settings_list`; metrics
  holds `solve_metrics` and "sampler": what the sampler used (steps, NFE, latent_init...)."""
  batch = job.config.data.eval_batch_size
  out = []
  for settings in progress(settings_list, len(settings_list), "sudoku sampler settings"):
    boards, used = draw_samples(job, params, model_state, settings, len(puzzles), batch, seed, clamped=puzzles)
    out.append((dict(solve_metrics(boards, puzzles, solutions), sampler=used), boards))
  return out


def sudoku_report(job, params, model_state, steps_list, count=None, clues=None, **overrides):
  """ladd.evaluate on Sudoku: `count` held-out puzzles of `clues` clues (default config
  eval.sudoku_puzzles / sudoku_clues) solved at each step count, the sampler set by config
  sample with `overrides` (e.g. latent_init). Returns {"puzzles", "clues", seeds, "by_steps":
  {steps: metrics}} and the boards {steps: [count, 81]}."""
  # eval / sample keys newer than the checkpoint's stored config take their defaults
  eval_cfg = dict(default_config().eval.to_dict(), **job.config.eval.to_dict())
  sample_cfg = dict(default_config().sample.to_dict(), **job.config.sample.to_dict())
  count = eval_cfg["sudoku_puzzles"] if count is None else count
  clues = eval_cfg["sudoku_clues"] if clues is None else clues
  if count < 1:
    raise ValueError(f"--sudoku_puzzles must be >= 1, got {count}")
  puzzles, solutions = sudoku_puzzles(job.config.data.shuffle_seed, job.config.data.sudoku_pool, count, clues)
  settings = [configured_settings(sample_cfg, steps=n, **overrides) for n in steps_list]
  rates = sudoku_solve_rates(job, params, model_state, settings, puzzles, solutions, sample_cfg["seed"])
  report = {"puzzles": count, "clues": clues, "puzzle_seed": job.config.data.shuffle_seed,
            "sample_seed": sample_cfg["seed"], "by_steps": {n: metrics for n, (metrics, _) in zip(steps_list, rates)}}
  return report, {n: boards for n, (_, boards) in zip(steps_list, rates)}


def exact_sample_metrics(job, params, model_state, sample_steps, seed, plot_path=None):
  """Sources with a known joint: JS (2D toys) or KL and TV (dependency tasks) of
  config eval.exact_samples samples at each step count, and the sample histograms.

  Returns ({steps: {metric: value, "nfe": ...}}, {steps: sample distribution}); with
  `plot_path`, 2D toys also get a PNG of the true and generated densities.
  """
  exact, cfg = job.dataset.exact, job.config
  base = configured_settings(cfg.sample)
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
  files.save_figure(fig, path, dpi=100)
  plt.close(fig)


def score_samples(samples_path, judge_workdir, output, judge_step=None):
  """ladd.evaluate --samples: the metrics JSON beside the samples (or at `output`)."""
  from ladd import text_metrics
  if not judge_workdir:
    raise ValueError("--samples needs --judge=WORKDIR of an autoregressive (method 'ar')"
                     " checkpoint or a GPT-2 safetensors directory")
  records = text_metrics.read_samples(samples_path)
  judge = text_metrics.load_judge(files.resolve(judge_workdir), judge_step)
  result = dict(text_metrics.sample_metrics(records, judge), samples_file=files.resolve(samples_path))
  if jax.process_index() == 0:
    checkpoint.write_json(output or os.path.splitext(samples_path)[0] + ".metrics.json", result)
    print(json.dumps(result, indent=2), flush=True)


def sweep_workdir(workdir, judge, steps, temperatures, num_samples, seed):
  """ladd.sweep: (sample records, one metrics row per setting) of one checkpoint."""
  from ladd import text_metrics
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
      rows.append(dict(base, **{k: metrics[k] for k in ("gen_ppl", "gen_nll_per_token_stderr", "unigram_entropy",
                                                           "repeated_4grams", "tokens")}))
  return records, rows
