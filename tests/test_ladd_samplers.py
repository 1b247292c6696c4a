"""LADD samplers (method.md §2) driven by a scripted stand-in network: every network call is
recorded, so NFE, carry-over of unmasked tokens and determinism are checked exactly on the
real sampling code without compiling a transformer."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ladd_binsaw
from ladd.diffusion import gaussian
from ladd.diffusion.sampling import SamplerSettings
from ladd.methods import build_method

VARIANTS = ("co_joint", "co_seq", "di_joint", "di_seq")


class ScriptedModel:
  """Pseudo-random logits that depend on the inputs; records each token input it sees."""

  def __init__(self, method):
    self.method = method
    self.token_inputs, self.latent_calls = [], []
    cfg = method.model_cfg
    self.width = cfg.padded_vocab
    spec = method.spec
    self.latent_width = spec.dim if spec.kind == "co" else spec.codebook_size + 1
    self.quantizer = types.SimpleNamespace(codebook=jnp.linspace(-1, 1, spec.codebook_size * spec.dim).reshape(spec.codebook_size, spec.dim))

  def denoiser(self, x_t, y, t_x, t_y, latent_masked=None):
    jax.debug.callback(lambda x: self.token_inputs.append(np.asarray(x)), x_t, ordered=True)
    phase = 7.0 * t_x[:, None, None] + 3.0 * jnp.sum(y, (1, 2))[:, None, None] + x_t[..., None]
    logits = 2.0 * jnp.sin(phase + jnp.arange(x_t.shape[1])[None, :, None] + jnp.arange(self.width))
    latent = jnp.cos(phase[:, :1] + t_y[:, None, None] + jnp.arange(self.latent_width)) * jnp.ones((1, y.shape[1], 1))
    return logits, latent

  def latent_denoiser(self, y_t, t):
    jax.debug.callback(lambda t: self.latent_calls.append(np.asarray(t)), t, ordered=True)
    return 0.5 * y_t + t[:, None, None]


@pytest.fixture(scope="module", params=VARIANTS)
def method(request):
  return build_method(ladd_binsaw.get_config(request.param + "_tiny"), 2)


class Drawer:
  """One compiled sampler per (method, settings); seeds are traced, so reruns are free."""

  def __init__(self, method, settings, num_samples=16):
    self.model = ScriptedModel(method)
    self.fn = jax.jit(lambda key: method.sample(self.model, key, num_samples, settings))

  def __call__(self, seed):
    self.model.token_inputs.clear()
    self.model.latent_calls.clear()
    tokens, info = self.fn(jax.random.key(seed))
    jax.effects_barrier()
    return np.asarray(tokens), {k: int(v) for k, v in info.items()}


@pytest.fixture(scope="module")
def drawer(method):
  return Drawer(method, SamplerSettings(steps=3, latent_steps=2, cache=False))


def expected_nfe(method, n_x, n_y):
  if not method.sequential:
    return n_x + 1
  if method.spec.kind == "co":
    return n_y + n_x + 1  # g_psi steps (the last returns y0-hat) + token steps + final fill
  return (n_y + 1) + (n_x + 1)  # code phase and token phase, each with its final fill


def check_nfe(method, drawer, steps, latent_steps):
  tokens, info = drawer(0)
  assert info["nfe"] == expected_nfe(method, steps, latent_steps)
  assert info["nfe"] == len(drawer.model.token_inputs) + len(drawer.model.latent_calls)
  assert info["nfe"] == info["nfe_x"] + info["nfe_y"]
  assert tokens.shape[1] == method.seq_len and set(np.unique(tokens)) <= {0, 1}


def test_nfe_matches_the_schedule_and_the_recorded_calls(method, drawer):
  check_nfe(method, drawer, 3, 2)


def test_nfe_with_one_step(method):
  check_nfe(method, Drawer(method, SamplerSettings(steps=1, latent_steps=1, cache=False), 2), 1, 1)


def test_unmasked_tokens_never_change(method, drawer):
  drawer(1)
  token_inputs = [x for x in drawer.model.token_inputs if (x != method.mask_id).any()]
  assert len(token_inputs) >= 2
  for before, after in zip(token_inputs, token_inputs[1:]):
    unmasked = before != method.mask_id
    np.testing.assert_array_equal(after[unmasked], before[unmasked])


def test_sampler_is_deterministic_under_a_seed(drawer):
  a, _ = drawer(5)
  b, _ = drawer(5)
  c, _ = drawer(6)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


class TimeRecorder(ScriptedModel):
  """Records the (t_x, t_y) of every joint network call."""

  def __init__(self, method):
    super().__init__(method)
    self.times = []

  def denoiser(self, x_t, y, t_x, t_y, latent_masked=None):
    jax.debug.callback(lambda a, b: self.times.append((float(a[0]), float(b[0]))), t_x, t_y, ordered=True)
    return super().denoiser(x_t, y, t_x, t_y, latent_masked)


@pytest.mark.parametrize("variant", ["co_joint", "di_joint"])
def test_joint_sampler_follows_the_leading_latent_path(variant):
  config = ladd_binsaw.get_config(variant + "_tiny")
  config.latent.update(lead=0.5, time_shift=0.5)
  method = build_method(config, 2)
  model = TimeRecorder(method)
  jax.jit(lambda key: method.sample(model, key, 2, SamplerSettings(steps=4, cache=False)))(jax.random.key(0))
  jax.effects_barrier()
  t_x, t_y = np.array(model.times).T
  assert len(t_x) == 5  # 4 steps + the final fill
  np.testing.assert_allclose(t_y, gaussian.latent_path(t_x, 0.5, 0.5, method.schedule.eps)[0], rtol=1e-6)
  end = float(gaussian.time_shift(method.schedule.eps, 0.5))
  assert np.isclose(t_y[2], end) and t_x[2] == pytest.approx(0.5, abs=1e-3)  # clean with half the tokens masked
