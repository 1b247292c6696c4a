"""Print the commands that train a config on a Cloud TPU VM slice (README "TPU VMs"):
`python tools/tpu_commands.py --accelerator=v5p-256 --config=configs/openwebtext_pod.py:1b`.

Accelerator types count TensorCores for v4 / v5p (two per chip: v5p-256 is 128 chips) and
chips for v5e / v6e. Nothing is run: the output is for you to read and paste.
"""

import argparse
import math
import re
import shlex
import sys

# --version of `gcloud compute tpus tpu-vm create` (check `gcloud compute tpus versions list --zone=...`)
RUNTIME = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
           "v6e": "v2-alpha-tpuv6e"}
TOPOLOGY_NAME = {"v4": "v4", "v5litepod": "v5e", "v5p": "v5p", "v6e": "v6e"}
CORES_PER_CHIP = {"v4": 2, "v5litepod": 1, "v5p": 2, "v6e": 1}
CHIPS_PER_HOST = {"v4": 4, "v5litepod": 8, "v5p": 4, "v6e": 8}


def topology(generation, chips):
  """The default slice shape of `chips` chips: 3D tori for v4 / v5p, 2D for v5e / v6e."""
  dims = [2, 2, 1] if CORES_PER_CHIP[generation] == 2 else [1, 1]
  while dims[0] * dims[1] * (dims[2] if len(dims) == 3 else 1) < chips:
    smallest = min(dims)
    dims[max(i for i, d in enumerate(dims) if d == smallest)] *= 2
  return "x".join(map(str, dims))


def parse_accelerator(accelerator):
  match = re.fullmatch(r"(v4|v5litepod|v5p|v6e)-(\d+)", accelerator.replace("v5e-", "v5litepod-"))
  if not match:
    raise ValueError(f"--accelerator={accelerator!r}: use a Cloud TPU accelerator type such as v5p-256, v6e-256, "
                     "v5litepod-16 (or v5e-16), v4-32")
  generation, count = match.group(1), int(match.group(2))
  if count % CORES_PER_CHIP[generation]:
    raise ValueError(f"--accelerator={accelerator!r}: {generation} counts {CORES_PER_CHIP[generation]} cores per chip")
  chips = count // CORES_PER_CHIP[generation]
  shape = topology(generation, chips)
  if math.prod(int(d) for d in shape.split("x")) != chips:
    raise ValueError(f"--accelerator={accelerator!r}: {chips} chips is not a slice size (use a power of two)")
  return generation, chips, shape


def commands(args):
  generation, chips, shape = parse_accelerator(args.accelerator)
  hosts = max(1, chips // CHIPS_PER_HOST[generation])
  name, zone = args.name, args.zone
  tpu = "gcloud compute tpus tpu-vm"
  where = f"{name} --zone={zone}"
  root = args.shared_dir or f"gs://{args.bucket}"
  workdir = f"{root}/runs/{args.run}"
  train = (f"python -m ladd.train --config={args.config} --workdir={workdir} --distributed"
           + "".join(f" {shlex.quote(o)}" for o in args.override))
  return [
      f"# {args.accelerator}: {chips} chips, topology {TOPOLOGY_NAME[generation]}:{shape}, {hosts} host(s)",
      "# 0. Here, before queueing: does the config fit? (pip install -c constraints.txt -e '.[tpu]')",
      f"python -m ladd.compile --config={args.config} --topology={TOPOLOGY_NAME[generation]}:{shape}"
      + "".join(f" {shlex.quote(o)}" for o in args.override),
      "# 1. Create the slice",
      f"{tpu} create {where} --accelerator-type={args.accelerator} --version={RUNTIME[generation]}",
      "# 2. Copy this checkout to every host and install it",
      "git archive --format=tar.gz --prefix=ladd/ -o /tmp/ladd.tar.gz HEAD",
      f"{tpu} scp /tmp/ladd.tar.gz {name}:~/ --zone={zone} --worker=all",
      f"{tpu} ssh {where} --worker=all --command=\"tar xzf ladd.tar.gz && cd ladd && "
      "pip install -c constraints.txt -e '.[tpu,tfds,gcs]'\"",
      *(mount_commands(args, tpu, where) if args.shared_dir else [
          "# 3. The work directory is in the bucket (every host reads and writes it; hosts share no disk).",
          "#    Make the bucket once, in the slice's region; the hosts' service account needs write access:",
          f"gcloud storage buckets create gs://{args.bucket} --location={zone.rsplit('-', 1)[0]}"]),
      "# 4. Train: one process per host; --distributed finds the others. Each host logs to ~/train.log;",
      f"#    process 0 prints the progress lines and writes {workdir}/metrics.jsonl, tensorboard/, config.json;",
      f"#    every host writes its shards of {workdir}/checkpoints/<step>/. Rerunning resumes.",
      f"{tpu} ssh {where} --worker=all --command=\"cd ladd && nohup {train} > ~/train.log 2>&1 &\"",
      "# 5. Watch, sample and evaluate (any machine that " + ("mounts" if args.shared_dir else "can read") + " the work directory)",
      f"{tpu} ssh {where} --worker=0 --command=\"tail -f ~/train.log\"",
      f"python -m ladd.sample --workdir={workdir} && python -m ladd.evaluate --workdir={workdir}",
      "# 6. Delete the slice when done (it is billed while it exists)",
      f"{tpu} delete {where} --quiet",
  ]


def mount_commands(args, tpu, where):
  return [
      f"# 3. Mount one file system on every host at {args.shared_dir} (hosts share no disk; checkpoints,",
      "#    metrics and the tokenizer go to the work directory), e.g. a Cloud Storage bucket with gcsfuse:",
      f"{tpu} ssh {where} --worker=all --command=\"sudo mkdir -p {args.shared_dir} && "
      f"sudo chown $USER {args.shared_dir} && gcsfuse --implicit-dirs {args.bucket} {args.shared_dir}\""]


def main(argv):
  parser = argparse.ArgumentParser(prog="tools/tpu_commands.py", description=__doc__.splitlines()[0])
  parser.add_argument("--accelerator", required=True, help="Cloud TPU accelerator type, e.g. v5p-256, v6e-256")
  parser.add_argument("--config", required=True, help="config, e.g. configs/openwebtext_pod.py:1b")
  parser.add_argument("--name", default="ladd", help="TPU VM name")
  parser.add_argument("--zone", default="us-east5-a", help="zone that offers the accelerator")
  parser.add_argument("--bucket", default="MY_BUCKET", help="Cloud Storage bucket of the work directory")
  parser.add_argument("--shared_dir", default="", help="instead of gs://BUCKET: a directory where every host mounts"
                      " the bucket with gcsfuse")
  parser.add_argument("--run", default="run", help="run name: the work directory is gs://BUCKET/runs/RUN"
                      " (or SHARED_DIR/runs/RUN)")
  parser.add_argument("override", nargs="*", help="extra --config.* overrides passed to ladd.compile and ladd.train")
  args = parser.parse_args(argv)
  try:
    print("\n".join(commands(args)))
  except ValueError as e:
    print(f"tools/tpu_commands.py: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
