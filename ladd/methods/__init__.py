"""Diffusion methods: each pairs a network with its loss, likelihood bound and sampler,
and implements `ladd.methods.base.Method`; new methods plug in by name here."""

from ladd.methods.base import Method
from ladd.methods.ar import Autoregressive
from ladd.methods.ladd import CoLadd, DiLadd
from ladd.methods.mdlm import MaskedDiffusion
from ladd.methods.vadd import VariationalAutoencodingDiffusion
from ladd.methods.vmd import VariationalMaskedDiffusion

METHODS = {"ar": Autoregressive, "mdlm": MaskedDiffusion, "co_ladd": CoLadd, "di_ladd": DiLadd, "vadd": VariationalAutoencodingDiffusion,
           "vmd": VariationalMaskedDiffusion}


# Methods that accept `pad_id` (padding that is never predicted nor counted).
PADDED = ("ar", "mdlm")


def build_method(config, vocab_size, pad_id=None) -> Method:
  if config.method not in METHODS:
    raise ValueError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}")
  if pad_id is None:
    return METHODS[config.method](config, vocab_size)
  if config.method not in PADDED:
    raise ValueError(f"method {config.method!r} does not support padded data (prepared with"
                     f" --packing=pad); use packed data or one of {', '.join(PADDED)}")
  return METHODS[config.method](config, vocab_size, pad_id)
