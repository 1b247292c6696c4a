"""configs/openwebtext.py (MDLM-small, GPT-2 tokens, L = 1024, prepared shards) across a
TPU pod slice. Prepare the shards once onto a filesystem every host mounts, then launch
on every host:
  python -m ladd.train --config=configs/openwebtext_pod.py --workdir=/mnt/shared/runs/owt \\
      --config.data.path=/mnt/shared/owt_gpt2 --distributed
Variants: default (v5p-128: fsdp over all chips), `:v5e` (data x fsdp on 16x16),
`:1b` (2048 x 20 layers, 1.25B parameters), `:8b` (4096 x 36 layers, 7.78B parameters, scanned).
`python -m ladd.compile --config=configs/openwebtext_pod.py:1b --topology=v5p:4x4x8` reports
whether a variant fits a slice (README "Memory per chip").
"""

from configs import openwebtext

VARIANTS = ("", "v5e", "1b", "8b")


def get_config(variant=""):
  c = openwebtext.get_config()
  c.data.update(path="/mnt/shared/owt_gpt2")
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  if variant == "v5e":
    c.mesh.update(data=2, fsdp=-1, tensor=1)
  elif variant == "1b":
    c.model.update(d_model=2048, n_layers=20, n_heads=16)
  elif variant == "8b":
    # scanned: 36 unrolled layers take far longer to compile (README "Memory per chip")
    c.model.update(d_model=4096, n_layers=36, n_heads=32, scan_layers=True)
    c.optim.update(lr=1.5e-4)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/openwebtext_pod.py; choose v5e, 1b or 8b")
  return c
