"""Held-out likelihood bound of a checkpoint: `python -m ladd.evaluate --workdir=DIR`.

Prints one JSON object (also written to `<workdir>/eval.json`): the continuous-time
NELBO per token and per sequence (and any further terms the method's `nelbo` returns,
e.g. elbo_x / elbo_y for latent methods), "kinds" (what each is: bound, objective or
diagnostic, from the method), and only where it is a bound the perplexity bound
exp(NELBO/token), bits per token and bits per character for text (ladd.summary), and the
estimator used; with `--bound_steps=N[,N...]` also the N-step bound of the N-step
sampler at each N (one printed line each, and "nstep_bounds"). Sources with a known joint (toys) also
get exact sample metrics at each `--sample_steps` count and `<workdir>/exact_densities.png`;
Sudoku work directories get the solve rate ("sudoku"): `--sudoku_puzzles` held-out puzzles
with `--sudoku_clues` clues each, sampled once per `--sample_steps` count with the clues
clamped (sampler settings from config sample, `--latent_init` for VMD / sequential LADD),
each reported as sudoku_solved, sudoku_valid, sudoku_cells_correct and the sampler record.
The autoregressive method's NELBO is its exact NLL: it reports `ppl`, a true perplexity.

`--data=PATH` evaluates on another corpus (zero-shot) with the checkpoint's tokenizer and
reports what that tokenizer could not represent; `--samples=FILE --judge=WORKDIR` scores
generated text instead (ladd/text_metrics.py), written to FILE's stem + `.metrics.json`.
"""

import json
import os

import jax
from absl import app
from absl import flags as absl_flags

from ladd import checkpoint, files, flags, nstep_bound
from ladd.data import sudoku
from ladd.data.zero_shot import zero_shot_dataset
from ladd.errors import one_line_errors
from ladd.evaluation import evaluate, exact_sample_metrics, nstep_bounds, score_samples, sudoku_report
from ladd.job import load_trained

NUM_BATCHES = absl_flags.DEFINE_integer("num_batches", None, "Held-out batches (default: config eval.num_batches; 0 = whole split).")
T_SAMPLES = absl_flags.DEFINE_integer("t_samples", None, "Time samples per sequence (default: config eval.t_samples).")
SAMPLES = absl_flags.DEFINE_string("samples", "", "Score this ladd.sample JSONL file (gen-PPL under --judge, entropy, repeated n-grams) instead of a checkpoint's held-out likelihood.")
DATA = absl_flags.DEFINE_string("data", "", "Zero-shot: evaluate on this .txt file or directory (or prepared shards' eval split) with the checkpoint's tokenizer instead of its own held-out split.")
BOUND_STEPS = absl_flags.DEFINE_list("bound_steps", [], "Step counts N for the N-step bound of the N-step sampler (e.g. 1,4,16); none by default.")
SAMPLE_STEPS = absl_flags.DEFINE_list("sample_steps", ["1", "2", "5", "10"], "Step counts for the exact sample metrics of sources with a known joint (toys) and for Sudoku solving.")
SUDOKU_PUZZLES = absl_flags.DEFINE_integer("sudoku_puzzles", None, "Sudoku: held-out puzzles to solve (default: config eval.sudoku_puzzles).")
SUDOKU_CLUES = absl_flags.DEFINE_integer("sudoku_clues", None, "Sudoku: clues per puzzle, 17..81 (default: config eval.sudoku_clues).")

for shared in ("seed", "checkpoint_step", "params", "output", "judge", "latent_init", "latent_candidates"):  # defined in ladd.flags, listed by --helpshort here
  absl_flags.declare_key_flag(shared)


def main(argv):
  del argv
  with one_line_errors("ladd.evaluate"):
    flags.start_distributed()
    if SAMPLES.value:
      score_samples(SAMPLES.value, flags.JUDGE.value, flags.OUTPUT.value, flags.CHECKPOINT_STEP.value)
      return
    bound_steps = flags.integers(BOUND_STEPS)
    nstep_bound.check_steps(bound_steps)  # before the (slow) checkpoint load
    if SUDOKU_CLUES.value is not None:
      sudoku.check_clues(SUDOKU_CLUES.value)
    job, step, params, model_state = load_trained(flags.WORKDIR.value, flags.CHECKPOINT_STEP.value, flags.PARAMS.value)
    workdir = files.resolve(flags.WORKDIR.value)
    zero_shot = None
    if DATA.value:
      job.dataset, zero_shot = zero_shot_dataset(job.dataset, DATA.value)
    cfg = job.config.eval
    num_batches = cfg.num_batches if NUM_BATCHES.value is None else NUM_BATCHES.value
    seed = cfg.seed if flags.SEED.value is None else flags.SEED.value
    result = evaluate(job, params, model_state, num_batches, T_SAMPLES.value or cfg.t_samples, seed)
    bound_lines = []
    if bound_steps:
      result["nstep_bounds"], bound_lines = nstep_bounds(job, params, model_state, bound_steps, num_batches, seed)
    if job.dataset.exact is not None and job.dataset.exact.metrics:  # a table to score samples against
      steps = flags.integers(SAMPLE_STEPS)
      plot = os.path.join(workdir, "exact_densities.png") if jax.process_index() == 0 else None
      result["exact_sample_metrics"], _ = exact_sample_metrics(job, params, model_state, steps, job.config.sample.seed, plot)
    if job.config.data.source == "sudoku":
      latent = {name: flag.value for name, flag in (("latent_init", flags.LATENT_INIT),
                                                    ("latent_candidates", flags.LATENT_CANDIDATES)) if flag.value is not None}
      result["sudoku"], _ = sudoku_report(job, params, model_state, flags.integers(SAMPLE_STEPS),
                                       SUDOKU_PUZZLES.value, SUDOKU_CLUES.value, **latent)
    result = dict(job.method.describe(), checkpoint_step=int(step), params=flags.PARAMS.value, **result)
    if zero_shot:
      result["zero_shot"] = zero_shot
    if jax.process_index() == 0:
      default = f"eval_{os.path.splitext(os.path.basename(os.path.normpath(DATA.value)))[0]}.json" if DATA.value else "eval.json"
      checkpoint.write_json(flags.OUTPUT.value or os.path.join(workdir, default), result)
      for line in bound_lines:  # before the JSON, which ends the output
        print(line)
      print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=flags.parser("ladd.evaluate"))
