"""Held-out N-step bounds (method.md §7): the ELBO of the N-step sampler itself, summed
over held-out batches for each N, and the lines `ladd.evaluate --bound_steps` prints.

Every method offers `nstep_nelbo(model, x0, key, steps, latent_steps)` (per-sequence nats
plus its terms) and `has_nstep_bound`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from ladd import sharding, summary


def nstep_eval_step(trainer, method, steps, latent_steps):
  """Jitted (params, model_state, batch, key) -> per-batch sums of the N-step bound's terms."""
  def step(params, model_state, batch, key):
    per_sequence = method.nstep_nelbo(nnx.merge(trainer.graphdef, params, model_state), batch, key, steps, latent_steps)
    return {name: value.astype(jnp.float32).sum() for name, value in per_sequence.items()}

  rep = sharding.replicated(trainer.mesh)
  shardings = (trainer.state_shardings["params"], trainer.state_shardings["model_state"],
               sharding.batch_sharding(trainer.mesh), rep)
  return sharding.on_mesh(trainer.mesh, jax.jit(step, in_shardings=shardings, out_shardings=rep))


def check_steps(steps_list):
  for n in steps_list:
    if n < 1:
      raise ValueError(f"--bound_steps must be >= 1, got {n}")


def evaluate_nstep_bounds(trainer, method, params, model_state, batches, seed, steps_list, latent_steps=0):
  """{N: float totals keyed like nstep_nelbo's output, plus `sequences` and `tokens`}: one
  pass over `batches`, every N on every batch, each stage with a fresh forward draw."""
  if not method.has_nstep_bound:
    raise ValueError(f"--bound_steps: this {method.name} checkpoint has no N-step bound (a deterministic "
                     "continuous latent has no density; latent.sigma0_mode fixed or learned gives one)")
  check_steps(steps_list)
  step_fns = {n: nstep_eval_step(trainer, method, n, latent_steps) for n in steps_list}
  key = jax.random.key(seed)
  totals = {n: {} for n in steps_list}
  sequences = tokens = 0
  for i, local_batch in enumerate(batches):
    batch = sharding.global_batch(local_batch, trainer.mesh)
    for n, fn in step_fns.items():
      sums = fn(params, model_state, batch, jax.random.fold_in(jax.random.fold_in(key, n), i))
      for name, value in sums.items():
        totals[n][name] = totals[n].get(name, 0.0) + float(value)
    sequences += batch.shape[0]
    tokens += batch.size
  return {n: dict(t, sequences=sequences, tokens=tokens) for n, t in totals.items()}


def estimator(method, steps, latent_steps, seed):
  """What one N-step number was computed from (method.md §6: the estimator is recorded)."""
  describe = method.describe()
  record = {"kind": "N-step bound of the temperature-1 ancestral sampler (sampled fills): sum over its grid "
                    "of KL(q(x_s | x_t, x0) || p(x_s | x_t)), one fresh x_t ~ q per stage per sequence",
            "steps": steps, "stages": steps + 1, "seed": seed}
  if getattr(method, "sequential", False):
    record.update(latent_steps=latent_steps or steps, stages=steps + 1 + (latent_steps or steps) + 1)
  if method.name == "vadd":
    record["z_samples_per_stage"] = describe["importance_samples"]
  if method.name == "vmd":
    record["z_samples"] = "one z ~ q(z | x0) per sequence"
  if method.name == "co_ladd":
    record.update(latent_sampler="ancestral (DDIM has no density)",
                  latent_last_step="y0 ~ N(y0-hat, I / SNR(t_N)) (the sampler sets y0 = y0-hat)")
  return record


def nstep_report(totals_by_steps, method, chars_per_token, latent_steps, seed):
  """({"N": metrics} for eval.json, the lines to print), from evaluate_nstep_bounds' totals;
  ladd.summary names the numbers, as for the continuous-time bound."""
  report, lines = {}, []
  for n, totals in totals_by_steps.items():
    entry = summary.summarize(totals, {"nelbo": "bound"}, chars_per_token)
    entry["estimator"] = dict(estimator(method, n, latent_steps, seed), sequences=totals["sequences"],
                              tokens=totals["tokens"])
    line = f"N-step bound (N={n}): {entry['nelbo_per_token']:.4f} nats/token, PPL <= {entry['ppl_bound']:.4g}"
    if "bits_per_char" in entry:
      line += f", {entry['bits_per_char']:.4f} bits/char"
    report[str(n)] = entry
    lines.append(line + " (temperature-1 sampler)")
  return report, lines
