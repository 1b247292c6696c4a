"""Kill benchmark: N random SIGKILLs of real `ladd.train` processes, each resumed, compared
with an uninterrupted run.

  python tools/bench_kill.py --kills=100            # the full benchmark (long on a CPU)
  python tools/bench_kill.py --kills=10 --steps=40  # a quick check

A fraction of the kills (--two_process_share) hits a two-process run (CPU collectives
over gloo, 4 devices each), where killing one process must stop the other (the peer
watchdog) before both are relaunched; about a third wait for an asynchronous checkpoint
save to be under way and kill it mid-save. Prints how many launches resumed, how many steps
were trained twice, and whether the final parameters, EMA, optimiser state, data-iterator
position and metrics.jsonl (all but timing columns) are bit-identical to the
uninterrupted run's.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_args(args, workdir):
  return [sys.executable, "-m", "ladd.train", "--config=configs/binsaw.py", f"--workdir={workdir}",
          f"--config.train.steps={args.steps}", "--config.train.log_every=1", "--config.train.eval_every=1000000",
          f"--config.train.checkpoint_every={args.checkpoint_every}", "--config.train.eval_batches=1",
          f"--config.model.d_model={args.d_model}", f"--config.model.n_layers={args.n_layers}",
          "--config.data.batch_size=16", "--config.data.eval_batch_size=16", "--peer_timeout_s=5"]


def env(devices, root):
  """Launches share a persistent compilation cache in the benchmark's directory: what is
  measured is resumption, and each of the hundreds of launches would otherwise recompile."""
  return dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_COMPILATION_CACHE_DIR=os.path.join(root, "xla_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def launch(args, workdir, processes):
  """One run: a list of Popen (one per process), their stdout lines collected by the caller."""
  if processes == 1:
    return [subprocess.Popen(train_args(args, workdir), cwd=ROOT, env=env(8, os.path.dirname(workdir)), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)]
  import portpicker
  port = portpicker.pick_unused_port()
  return [subprocess.Popen(train_args(args, workdir) + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                                       f"--process_id={i}"],
                           cwd=ROOT, env=env(4, os.path.dirname(workdir)), stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, text=True) for i in range(2)]


def finish(procs):
  out = procs[0].communicate()[0]
  codes = [p.wait() for p in procs]
  if codes != [0] * len(procs):
    raise SystemExit(f"an uninterrupted launch failed with {codes}: {out[-2000:]}")
  return out


def saving(workdir):
  return glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))


def killed_run(args, rng, workdir, processes, kills, stats):
  """Launches, kills (SIGKILL to one process) `kills` times, then runs to the end."""
  for _ in range(kills):
    procs = launch(args, workdir, processes)
    mid_save = rng.random() < 1 / 3
    steps_before_kill = int(rng.integers(1, 2 * args.checkpoint_every + 1))
    first_step, last_step, resumed = None, 0, None
    for line in procs[0].stdout:
      if line.startswith("resumed from step"):
        resumed = int(line.split()[3])
      if line.startswith("step "):
        last_step = int(line.split()[1].split("/")[0])
        first_step = first_step or last_step
      if first_step and (last_step - first_step + 1 >= steps_before_kill or last_step >= args.steps - 1):
        if not mid_save or saving(workdir) or last_step >= args.steps - 1:
          break
    if not mid_save:
      time.sleep(rng.uniform(0, args.max_delay_s))  # anywhere in the next step or save
    stats["mid_save"] += bool(saving(workdir))
    procs[-1].kill()  # one process dies; in a two-process run the other must stop by itself
    codes = [p.wait(timeout=120) for p in procs]
    stats["kills"] += 1
    stats["peer_stopped"] += processes == 2 and codes[0] != 0
    stats["resumed"] += resumed is not None
    stats["trained"] += max(last_step - (resumed or 0), 0)
  out = finish(launch(args, workdir, processes))
  final_steps = [int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("step ")]
  resumed = [int(line.split()[3]) for line in out.splitlines() if line.startswith("resumed from step")]
  stats["resumed"] += bool(resumed)
  stats["trained"] += len(final_steps)


def final_state(workdir, step):
  import jax
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints")
  as_numpy = {}  # host arrays: a two-process checkpoint names devices this process does not have
  for item in ("state", "ema"):
    with ocp.PyTreeCheckpointer() as reader:
      metadata = reader.metadata(os.path.join(path, str(step), item)).item_metadata
    as_numpy[item] = ocp.args.PyTreeRestore(restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata))
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True)) as mgr:
    restored = mgr.restore(step, args=ocp.args.Composite(**as_numpy))
  data = {}
  for name in sorted(glob.glob(os.path.join(path, str(step), "data", "process_*.json"))):
    with open(name) as f:
      data[os.path.basename(name)] = json.load(f)
  return jax.tree.map(np.asarray, {"state": restored["state"], "ema": restored["ema"]}), data


def rows(workdir):
  from ladd.metrics import TIMING_KEYS  # after main() has chosen the JAX platform
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


def identical(a, b, steps):
  import jax
  (tree_a, data_a), (tree_b, data_b) = final_state(a, steps), final_state(b, steps)
  same_tree = (jax.tree.structure(tree_a) == jax.tree.structure(tree_b)
               and all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b))))
  return same_tree and data_a == data_b, rows(a) == rows(b)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=100)
  parser.add_argument("--two_process_share", type=float, default=0.2)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--checkpoint_every", type=int, default=5)
  parser.add_argument("--d_model", type=int, default=128)
  parser.add_argument("--n_layers", type=int, default=4)
  parser.add_argument("--max_delay_s", type=float, default=0.5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"  # this process reads 8-device checkpoints
  root = args.workdir or tempfile.mkdtemp(prefix="bench_kill_")
  rng = np.random.default_rng(args.seed)
  two = int(round(args.kills * args.two_process_share))
  print(f"bench_kill: {args.kills} SIGKILLs ({two} on a two-process run), binsaw d_model={args.d_model} "
        f"n_layers={args.n_layers}, {args.steps} steps, checkpoint every {args.checkpoint_every}, in {root}", flush=True)
  results = {}
  start = time.time()
  for processes, kills in ((1, args.kills - two), (2, two)):
    if not kills:
      continue
    ref, victim = os.path.join(root, f"ref{processes}"), os.path.join(root, f"killed{processes}")
    finish(launch(args, ref, processes))
    stats = dict(kills=0, resumed=0, mid_save=0, peer_stopped=0, trained=0)
    killed_run(args, rng, victim, processes, kills, stats)
    state_ok, metrics_ok = identical(victim, ref, args.steps)
    results[processes] = dict(stats, repeated=stats["trained"] - args.steps, state_identical=state_ok,
                              metrics_identical=metrics_ok)
    print(f"{processes} process(es): {json.dumps(results[processes])}", flush=True)
  total = {k: sum(r[k] for r in results.values()) for k in ("kills", "resumed", "mid_save", "repeated")}
  all_ok = all(r["state_identical"] and r["metrics_identical"] for r in results.values())
  print(f"bench_kill: {total['kills']} kills ({total['mid_save']} mid-save), {total['resumed']} launches resumed, "
        f"{total['repeated']} steps repeated, final state and metrics bit-identical: {all_ok} "
        f"({time.time() - start:.0f} s)", flush=True)
  sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
  main()
