"""Diffusion methods: each pairs a network with its loss, likelihood bound and sampler.

A method object offers `init_model(rngs)`, `loss(model, x0, key, step)`, `nelbo(model, x0, key)`,
`sample(model, key, num_samples, settings)`, `latent_steps(settings)` (N_y or None),
`flops_per_token`, `describe()`, `quantities` (what each nelbo output is: bound, objective or
diagnostic; ladd.summary reads it), `nstep_nelbo(model, x0, key, steps, latent_steps)` with
`has_nstep_bound` (the N-step sampler's own bound, method.md §7) and `lr_scales`
(learning-rate multipliers of named top-level submodules, usually empty); the
trainer and the entry points use nothing else, so new methods plug in by name here.
"""

from ladd.methods.ladd import CoLadd, DiLadd
from ladd.methods.mdlm import MaskedDiffusion
from ladd.methods.vadd import VariationalAutoencodingDiffusion
from ladd.methods.vmd import VariationalMaskedDiffusion

METHODS = {"mdlm": MaskedDiffusion, "co_ladd": CoLadd, "di_ladd": DiLadd, "vadd": VariationalAutoencodingDiffusion,
           "vmd": VariationalMaskedDiffusion}


def build_method(config, vocab_size):
  if config.method not in METHODS:
    raise ValueError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}")
  return METHODS[config.method](config, vocab_size)
