"""Every sampler's draws under a seed with scripted networks, saved so that two versions of
the code can be compared bit for bit (the evidence that a refactor kept the samples).

  mkdir /tmp/old && git archive <commit> ladd configs tests | tar -x -C /tmp/old && cp -r tools /tmp/old
  (cd /tmp/old && python -m tools.sampler_draws /tmp/old.npz)
  python -m tools.sampler_draws /tmp/new.npz
  python -m tools.sampler_draws --compare /tmp/old.npz /tmp/new.npz
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import ladd_binsaw
from configs import toys as toy_configs
from ladd.diffusion.sampling import SamplerSettings
from ladd.methods import build_method
from tests.test_ladd_samplers import ScriptedModel


class ScriptedDiT:
  """Pseudo-random logits depending on x_t, t and z (MDLM, VADD, VMD call signature)."""

  def __init__(self, width):
    self.width = width

  def __call__(self, x_t, t, z=None):
    phase = 7.0 * t[:, None, None] + x_t[..., None]
    if z is not None:
      phase = phase + 3.0 * jnp.sum(z, -1)[:, None, None]
    return 2.0 * jnp.sin(phase + jnp.arange(x_t.shape[1])[None, :, None] + jnp.arange(self.width))


def draws():
  out = {}
  for variant in ("co_joint", "co_seq", "di_joint", "di_seq"):
    method = build_method(ladd_binsaw.get_config(variant + "_tiny"), 2)
    for cache in (False, True):
      for latent_sampler in ("ddim", "ancestral"):
        settings = SamplerSettings(steps=5, latent_steps=3, cache=cache, latent_sampler=latent_sampler,
                                   temperature=0.8)
        x, info = jax.jit(lambda k: method.sample(ScriptedModel(method), k, 16, settings))(jax.random.key(3))
        out[f"{variant}_{cache}_{latent_sampler}"] = np.asarray(x)
        out[f"{variant}_{cache}_{latent_sampler}_nfe"] = np.array([int(v) for v in info.values()])
  for name in ("mdlm", "vadd", "vmd"):
    for decoding in ("sample", "argmax"):
      config = toy_configs.get_config(f"{name},copy,tiny")
      config.data.update(toy_vocab=5)
      config.vae.update(vmd_decoding=decoding)
      method = build_method(config, 5)
      for cache in (False, True):
        settings = SamplerSettings(steps=6, cache=cache, temperature=0.9)
        model = ScriptedDiT(method.model_cfg.padded_vocab)
        x, info = jax.jit(lambda k: method.sample(model, k, 32, settings))(jax.random.key(4))
        out[f"{name}_{decoding}_{cache}"] = np.asarray(x)
        out[f"{name}_{decoding}_{cache}_nfe"] = np.array(int(info["nfe"]))
  return out


if __name__ == "__main__":
  if sys.argv[1] == "--compare":
    old, new = np.load(sys.argv[2]), np.load(sys.argv[3])
    for name in old.files:
      print(name, "identical" if np.array_equal(old[name], new[name]) else "DIFFERENT")
  else:
    np.savez(sys.argv[1], **draws())
