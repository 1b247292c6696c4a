"""Train a model: `python -m ladd.train --config=configs/shakespeare.py --workdir=DIR`.

Resumes automatically from the newest complete checkpoint in DIR.
"""

import os
import time

import jax
import numpy as np
from absl import app
from ml_collections import config_flags

from ladd import checkpoint, flags, metrics, sharding
from ladd.errors import one_line_errors
from ladd.job import build_job
from ladd.trainer import evaluate_nelbo, perplexity

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/x.py:variant).", lock_config=True)

CONSOLE_KEYS = ("loss", "nelbo_per_token", "grad_norm", "lr", "tokens_per_sec_per_device", "mfu",
                "eval/nelbo_per_token", "eval/ppl", "eval/ppl_bound", "eval/bpc", "eval/latent_information_per_sequence")


def held_out_metrics(job, params, model_state, num_batches):
  data = job.dataset
  local = job.config.data.eval_batch_size // jax.process_count()
  batches = data.eval_batches(jax.process_index(), jax.process_count(), local, num_batches)
  totals = evaluate_nelbo(job.trainer, params, model_state, batches, job.config.eval.seed)
  per_token = totals["nelbo"] / totals["tokens"]
  out = {"eval/nelbo_per_token": per_token}
  out.update({f"eval/{name}": value for name, value in perplexity(job.method, per_token).items()})
  for name in totals.keys() - {"nelbo", "sequences", "tokens"}:  # the method's own terms
    out[f"eval/{name}_per_sequence"] = totals[name] / totals["sequences"]
  if data.chars_per_token:
    out["eval/bpc"] = per_token / np.log(2) / data.chars_per_token
  return out


def train(config, workdir):
  job = build_job(config, workdir)
  trainer, cfg = job.trainer, config.train
  is_main = jax.process_index() == 0
  mgr = checkpoint.manager(workdir, keep=cfg.keep_checkpoints)
  local_batch = config.data.batch_size // jax.process_count()
  data_iter = job.dataset.train_iterator(jax.process_index(), jax.process_count(), local_batch)

  step = mgr.latest_step()
  if step is None:
    state = trainer.init()
    step = 0
  else:
    checkpoint.check_compatible(checkpoint.read_config_record(mgr, step), job.record, mgr.directory)
    state = checkpoint.restore_train(mgr, step, trainer, data_iter)
    if is_main:
      print(f"resumed from step {step} in {mgr.directory}", flush=True)
  if is_main:
    checkpoint.write_json(os.path.join(workdir, "config.json"), job.record)
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    print(f"{job.method.name}: {n_params / 1e6:.2f}M parameters, vocab {job.dataset.vocab_size}, "
          f"mesh {sharding.describe(job.mesh)}, {jax.process_count()} process(es), "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)", flush=True)

  writer = metrics.MetricWriter(workdir, enabled=is_main)
  peak = metrics.peak_flops_per_device(cfg.peak_tflops_per_device)
  tokens_per_step = config.data.batch_size * config.data.seq_len
  interval_start, interval_steps = time.time(), 0
  while step < cfg.steps:
    batch = sharding.global_batch(next(data_iter), job.mesh)
    state, step_metrics = trainer.train_step(state, batch)
    step += 1
    interval_steps += 1
    record = {}
    if step % cfg.log_every == 0 or step == cfg.steps:
      record = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      elapsed = time.time() - interval_start
      throughput = interval_steps * tokens_per_step / elapsed / jax.device_count()
      record["tokens_per_sec_per_device"] = throughput
      record["step_time_s"] = elapsed / interval_steps
      if peak:
        record["mfu"] = throughput * job.method.flops_per_token / peak
      interval_start, interval_steps = time.time(), 0
    if step % cfg.eval_every == 0 or step == cfg.steps:
      record.update(held_out_metrics(job, state["ema"], state["model_state"], cfg.eval_batches))
      interval_start = time.time()  # evaluation time is not training throughput
    if step % cfg.checkpoint_every == 0 or step == cfg.steps:
      checkpoint.save(mgr, step, state, data_iter, job.record)
    if record:
      writer.write(step, record)
      if is_main:
        metrics.console(step, cfg.steps, record, CONSOLE_KEYS)
  if mgr.latest_step() is None:  # train.steps == 0: keep the initial model for evaluation
    checkpoint.save(mgr, 0, state, data_iter, job.record)
  mgr.wait_until_finished()
  mgr.close()
  writer.close()
  return state


def main(argv):
  del argv
  with one_line_errors("ladd.train"):
    flags.start_distributed()
    if CONFIG.value is None:
      raise ValueError("--config is required, e.g. --config=configs/shakespeare.py")
    if not flags.WORKDIR.value:
      raise ValueError("--workdir is required")
    workdir = os.path.abspath(flags.WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    train(CONFIG.value, workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=flags.parser("ladd.train"))
