"""The training loop behind `ladd.train` (a module without absl flags, so experiments and
tests call `train(config, workdir)` directly): resume or initialise, step, log, evaluate,
checkpoint, and stop cleanly on preemption or non-finite steps."""

import os
import time

import jax

from ladd import aot, checkpoint, errors, faults, metrics, sharding, summary
from ladd.job import build_job
from ladd.profiling import StepWindowProfiler
from ladd.trainer import evaluate_nelbo

CONSOLE_KEYS = ("loss", "nelbo_per_token", "grad_norm", "lr", "tokens_per_sec_per_device", "mfu",
                "step_time_s", "data_wait_s", "eval/nelbo_per_token", "eval/ppl", "eval/ppl_bound",
                "eval/bits_per_char", "eval/latent_information_per_sequence")


def held_out_metrics(job, params, model_state, num_batches):
  """ladd.summary's metrics of the held-out NELBO, as eval/<key> (numbers only)."""
  data = job.dataset
  local = job.config.data.eval_batch_size // jax.process_count()
  batches = data.eval_batches(jax.process_index(), jax.process_count(), local, num_batches)
  totals = evaluate_nelbo(job.trainer, params, model_state, batches, job.config.eval.seed)
  reported = summary.summarize(totals, job.method.quantities, data.chars_per_token)
  return {f"eval/{k}": v for k, v in reported.items() if k != "kinds"}


def restore_or_init(job, mgr, data_iter):
  """(state, step) from the newest readable checkpoint (the data iterator restored in
  place), or the initial state at step 0 in an empty work directory."""
  if not mgr.all_steps():
    return job.trainer.init(), 0

  def restore(step):
    return checkpoint.restore_train(mgr, step, job.trainer, data_iter, job.record)

  step, state = checkpoint.restore_newest_readable(mgr, restore, move_unreadable=True)
  return state, step


def train(config, workdir):
  job = build_job(config, workdir)
  trainer, cfg = job.trainer, config.train
  is_main = jax.process_index() == 0
  mgr = checkpoint.manager(workdir, keep=cfg.keep_checkpoints)
  local_batch = config.data.batch_size // jax.process_count()
  data_iter = job.dataset.train_iterator(jax.process_index(), jax.process_count(), local_batch)

  state, step = restore_or_init(job, mgr, data_iter)
  if step and is_main:
    print(f"resumed from step {step} in {mgr.directory}", flush=True)
  if is_main:
    checkpoint.write_json(os.path.join(workdir, "config.json"), job.record)
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    print(f"{job.method.name}: {n_params / 1e6:.2f}M parameters, vocab {job.dataset.vocab_size}, "
          f"mesh {sharding.describe(job.mesh)}, {jax.process_count()} process(es), "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)", flush=True)

  writer = metrics.MetricWriter(workdir, enabled=is_main, start_step=step)
  peak = metrics.peak_flops_per_device(cfg.peak_tflops_per_device)
  step_flops = aot.model_flops_per_step(config, job.dataset.vocab_size, job.mesh) if peak else None
  profiler = StepWindowProfiler(cfg.profile_steps, workdir, cfg.steps)
  tokens_per_step = config.data.batch_size * config.data.seq_len
  guard = faults.NonFiniteGuard(cfg.skip_nonfinite)
  interval_start, interval_steps, interval_wait = time.time(), 0, 0.0
  try:
    with faults.Preemption() as preemption:
      while step < cfg.steps:
        profiler.before_step(step)
        wait_start = time.time()
        batch = sharding.global_batch(next(data_iter), job.mesh)
        interval_wait += time.time() - wait_start
        state, step_metrics = trainer.train_step(state, batch)
        step += 1
        interval_steps += 1
        profiler.after_step(step, state)
        guard.add(step, step_metrics.pop("finite"))
        stop = preemption.reached(step)
        log = step % cfg.log_every == 0 or step == cfg.steps or stop
        evaluate = step % cfg.eval_every == 0 or step == cfg.steps
        save = step % cfg.checkpoint_every == 0 or step == cfg.steps or stop
        record = {}
        if log or evaluate or save:  # nothing non-finite is logged as good, evaluated or saved
          skipped = guard.check(last_good=_describe_latest(mgr))
          if skipped and is_main:
            errors.warn(f"skipped {skipped} non-finite step(s) up to step {step} ({guard.skipped_total} in this run)")
        if log:
          record = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          elapsed = time.time() - interval_start
          throughput = interval_steps * tokens_per_step / elapsed / jax.device_count()
          record["tokens_per_sec_per_device"] = throughput
          record["step_time_s"] = elapsed / interval_steps
          # the host waiting for batches; the rest of a step is dispatch and device time
          record["data_wait_s"] = interval_wait / interval_steps
          if cfg.skip_nonfinite:
            record["skipped_nonfinite_steps"] = guard.skipped_total
          if peak:
            record["mfu"] = step_flops / record["step_time_s"] / peak
          interval_start, interval_steps, interval_wait = time.time(), 0, 0.0
        if evaluate:
          record.update(held_out_metrics(job, state["ema"], state["model_state"], cfg.eval_batches))
          interval_start = time.time()  # evaluation time is not training throughput
        if save:
          checkpoint.save(mgr, step, state, data_iter, job.record)
        if record:
          writer.write(step, record)
          if is_main:
            metrics.console(step, cfg.steps, record, CONSOLE_KEYS,
                          eta_s=record["step_time_s"] * (cfg.steps - step) if log else None)
        if stop:
          break
    if mgr.latest_step() is None:  # train.steps == 0: keep the initial model for evaluation
      checkpoint.save(mgr, 0, state, data_iter, job.record)
  finally:  # a run stopped by an error still completes the saves it started
    mgr.wait_until_finished()
    mgr.close()
    writer.close()
  if preemption.signal and is_main:
    print(f"{preemption.signal}: stopped after step {step}; checkpoint saved in {mgr.directory}/{step}; "
          "run the same command to resume", flush=True)
  return state


def _describe_latest(mgr):
  latest = mgr.latest_step()
  return "none" if latest is None else f"step {latest} in {mgr.directory}"
