"""Diffusion methods: each pairs a network with its loss, likelihood bound and sampler,
and implements `ladd.methods.base.Method`; new methods plug in by name here."""

from ladd.methods.base import Method
from ladd.methods.ladd import CoLadd, DiLadd
from ladd.methods.mdlm import MaskedDiffusion
from ladd.methods.vadd import VariationalAutoencodingDiffusion
from ladd.methods.vmd import VariationalMaskedDiffusion

METHODS = {"mdlm": MaskedDiffusion, "co_ladd": CoLadd, "di_ladd": DiLadd, "vadd": VariationalAutoencodingDiffusion,
           "vmd": VariationalMaskedDiffusion}


def build_method(config, vocab_size) -> Method:
  if config.method not in METHODS:
    raise ValueError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}")
  return METHODS[config.method](config, vocab_size)
