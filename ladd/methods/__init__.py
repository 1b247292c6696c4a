"""Diffusion methods: each pairs a network with its loss, likelihood bound and sampler.

A method object offers `init_model(rngs)`, `loss(model, x0, key, step)`, `nelbo(model, x0, key)`,
`sample(model, key, num_samples, settings)`, `latent_steps(settings)` (N_y or None),
`flops_per_token`, `describe()`, `nelbo_is_bound`, `exact_likelihood` (nelbo is
-log p(x0) itself, not a bound: the AR model) and `lr_scales`
(learning-rate multipliers of named top-level submodules, usually empty); the
trainer and the entry points use nothing else, so new methods plug in by name here.
Methods in PADDED accept `pad_id` (padding that is never predicted nor counted) and
expose it as `pad_id`.
"""

from ladd.methods.ar import Autoregressive
from ladd.methods.ladd import CoLadd, DiLadd
from ladd.methods.mdlm import MaskedDiffusion
from ladd.methods.vadd import VariationalAutoencodingDiffusion
from ladd.methods.vmd import VariationalMaskedDiffusion

METHODS = {"ar": Autoregressive, "mdlm": MaskedDiffusion, "co_ladd": CoLadd, "di_ladd": DiLadd, "vadd": VariationalAutoencodingDiffusion,
           "vmd": VariationalMaskedDiffusion}


PADDED = ("ar", "mdlm")


def build_method(config, vocab_size, pad_id=None):
  if config.method not in METHODS:
    raise ValueError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}")
  if pad_id is None:
    return METHODS[config.method](config, vocab_size)
  if config.method not in PADDED:
    raise ValueError(f"method {config.method!r} does not support padded data (prepared with"
                     f" --packing=pad); use packed data or one of {', '.join(PADDED)}")
  return METHODS[config.method](config, vocab_size, pad_id)
