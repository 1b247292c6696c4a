"""LADD on binsaw (method.md §2, §5): the latent must carry the saw's phase.

Variants `co_joint`, `co_seq`, `di_joint`, `di_seq` (Co-/Di-LADD, joint or sequential
schedule), each also as `<variant>_tiny` (seconds; tests). S' = 1 slot of d = 32 dims.
"""

from configs import binsaw

METHOD_AND_SCHEDULE = {"co_joint": ("co_ladd", "joint"), "co_seq": ("co_ladd", "sequential"),
                       "di_joint": ("di_ladd", "joint"), "di_seq": ("di_ladd", "sequential")}
VARIANTS = tuple(name + size for name in METHOD_AND_SCHEDULE for size in ("", "_tiny"))


def apply_ladd(c, variant, source):
  """Sets method and schedule for `variant` (optionally `_tiny`) on a base config."""
  base = variant.removesuffix("_tiny")
  if base not in METHOD_AND_SCHEDULE:
    choices = ", ".join(f"{v}[_tiny]" for v in METHOD_AND_SCHEDULE)
    raise ValueError(f"unknown variant {variant!r} of configs/ladd_{source}.py; choose {choices}")
  c.method, schedule = METHOD_AND_SCHEDULE[base]
  c.latent.update(schedule=schedule, slots=1, dim=32, l2_norm=True, dropout=0.1)
  if c.method == "di_ladd":
    # Independent times let the joint network also see clean codes with noisy tokens.
    c.latent.update(codebook_size=32, dim=16, independent_times=schedule == "joint")
  if variant.endswith("_tiny"):
    c.latent.update(encoder_d_model=32, denoiser_d_model=32, denoiser_layers=1, codebook_size=8)
  return c


def get_config(variant="co_joint"):
  tiny = variant.endswith("_tiny")
  c = binsaw.get_config("tiny" if tiny else "")
  return apply_ladd(c, variant, "binsaw")
