"""configs/openwebtext.py (MDLM-small, GPT-2 tokens, L = 1024, prepared shards) across a
TPU pod slice. Prepare the shards once onto a filesystem every host mounts, then launch
on every host:
  python -m ladd.train --config=configs/openwebtext_pod.py --workdir=/mnt/shared/runs/owt \\
      --config.data.path=/mnt/shared/owt_gpt2 --distributed
Variants: default (v5p-128: fsdp over all chips), `:v5e` (data x fsdp on 16x16).
"""

from configs import openwebtext

VARIANTS = ("", "v5e")


def get_config(variant=""):
  c = openwebtext.get_config()
  c.data.update(path="/mnt/shared/owt_gpt2")
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  if variant == "v5e":
    c.mesh.update(data=2, fsdp=-1, tensor=1)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/openwebtext_pod.py; choose v5e")
  return c
