"""Conditional generation through the one reverse loop, for every method and schedule: a
scripted network returns the exact conditionals of a known joint, so clamped samples must
follow the true conditional; truncation and 64-bit noise are checked against known answers."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ladd_binsaw, toys as toy_configs
from ladd.data.dataset import Dataset
from ladd.data.tokenizers import CharTokenizer
from ladd.diffusion import masking, sampling
from ladd.diffusion.sampling import FREE, SamplerSettings
from ladd.diffusion.schedules import Schedule
from ladd.generate import blockwise, clamped_from_text
from ladd.methods import METHODS, Method, build_method

V, L, COPY = 3, 4, 0.8
CONFIGS = np.array(list(itertools.product(range(V), repeat=L)))
# x_0 uniform; every later symbol copies x_0 with probability COPY, else is uniform.
JOINT = np.prod(np.where(CONFIGS[:, 1:] == CONFIGS[:, :1], COPY + (1 - COPY) / V, (1 - COPY) / V), -1) / V
CLAMPED = np.array([2, FREE, FREE, 1])  # a prompt and a suffix
TRUE_CONDITIONAL = np.array([(1 - COPY) / V, (1 - COPY) / V, COPY + (1 - COPY) / V])  # p(x_1 | x_0 = 2)
VARIANTS = ("mdlm", "vadd", "vmd", "co_joint", "co_seq", "di_joint", "di_seq")


def exact_logits(x_t, width):
  """log p(x0^i | x_t) of the copy joint at every position (MASK = V)."""
  visible = (x_t[:, None] == V) | (jnp.asarray(CONFIGS)[None] == x_t[:, None])
  weights = jnp.all(visible, -1) * jnp.asarray(JOINT, jnp.float32)[None]
  marginals = jnp.einsum("bc,clv->blv", weights, jax.nn.one_hot(CONFIGS, V)) / weights.sum(-1)[:, None, None]
  return jnp.full(x_t.shape + (width,), masking.NEG_INF).at[..., :V].set(jnp.log(jnp.maximum(marginals, 1e-30)))


class ScriptedQuantizer:
  def __init__(self, codebook):
    self.codebook = codebook

  def __call__(self, z_e, update):
    ids = jnp.zeros(z_e.shape[:2], jnp.int32)
    return ids, self.codebook[ids]


class ExactModel:
  """Every interface a sampler calls; the token logits are exact, latents are ignored."""

  def __init__(self, method):
    self.width = method.model_cfg.padded_vocab
    spec = getattr(method, "spec", None)
    if spec is not None:
      self.latent_width = spec.dim if spec.kind == "co" else spec.codebook_size + 1
      self.quantizer = ScriptedQuantizer(jnp.linspace(-1, 1, spec.codebook_size * spec.dim).reshape(spec.codebook_size, spec.dim))
      self.slots, self.dim = spec.slots, spec.dim

  def __call__(self, x_t, t, z=None):
    return exact_logits(x_t, self.width)

  def denoiser(self, x_t, y, t_x, t_y, latent_masked=None):
    return exact_logits(x_t, self.width), jnp.zeros(y.shape[:2] + (self.latent_width,))

  def latent_denoiser(self, y_t, t):
    return jnp.zeros_like(y_t)

  def encoder(self, x0, corrupt):
    return jnp.zeros((x0.shape[0], self.slots, self.dim)) + jnp.mean(corrupt)


def method_for(variant):
  if variant in ("mdlm", "vadd", "vmd"):
    config = toy_configs.get_config(f"{variant},copy,tiny")
  else:
    config = ladd_binsaw.get_config(variant + "_tiny")
  config.data.seq_len = L
  return build_method(config, V)


@pytest.fixture(scope="module", params=VARIANTS)
def method(request):
  return method_for(request.param)


def draw(method, all_settings, num_samples, seed=0, clamped=CLAMPED):
  """One compiled function drawing with each of `all_settings` from the same key."""
  model = ExactModel(method)
  fn = jax.jit(lambda key: [method.sample(model, key, num_samples, s, clamped) for s in all_settings])
  return [(np.asarray(tokens), {k: int(v) for k, v in info.items()}) for tokens, info in fn(jax.random.key(seed))]


def test_clamped_samples_follow_the_true_conditional_and_top_k_all_changes_nothing(method):
  plain = SamplerSettings(steps=4, cache=False)
  truncation_off = SamplerSettings(steps=4, cache=False, top_k=method.model_cfg.padded_vocab, top_p=1.0)
  (tokens, info), (same, same_info) = draw(method, [plain, truncation_off], 2000)
  np.testing.assert_array_equal(tokens[:, [0, 3]], np.broadcast_to([2, 1], (2000, 2)))
  for position in (1, 2):  # unconditionally each symbol has probability 1/3
    freq = np.bincount(tokens[:, position], minlength=V + 1) / len(tokens)
    np.testing.assert_allclose(freq[:V], TRUE_CONDITIONAL, atol=0.04)
  np.testing.assert_array_equal(same, tokens)
  assert same_info == info and info["nfe"] == method_nfe(method, 4)


def method_nfe(method, steps):
  if method.name == "di_ladd" and method.sequential:
    return 2 * (steps + 1)
  if method.name == "co_ladd" and method.sequential:
    return 2 * steps + 1
  return steps + 1


def test_sequential_latent_from_the_encoder_of_the_clamped_tokens():
  for variant in ("co_seq", "di_seq"):
    method = method_for(variant)
    settings = SamplerSettings(steps=3, cache=False, latent_init="encoder")
    model = ExactModel(method)
    tokens, info = jax.jit(lambda key: method.sample(model, key, 64, settings, CLAMPED))(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(tokens)[:, [0, 3]], np.broadcast_to([2, 1], (64, 2)))
    assert (int(info["nfe_y"]), int(info["nfe"])) == (1, int(info["nfe_x"]) + 1)
    assert method.sampler_used(settings)["latent_init"] == "encoder"
    with pytest.raises(ValueError, match="clamped"):
      method.sample(model, jax.random.key(0), 4, settings)
  with pytest.raises(ValueError, match="sequential"):
    method_for("co_joint").sampler_used(settings)
  with pytest.raises(ValueError, match="resample"):
    method_for("vmd").sampler_used(settings)
  with pytest.raises(ValueError, match="VMD"):
    method_for("di_seq").sampler_used(SamplerSettings(latent_init="resample"))


class SignOfZ:
  """VMD network whose tokens follow the sign of z_0: symbol 0 w.p. 0.91 when z_0 > 0."""

  def __init__(self, width):
    self.width = width

  def __call__(self, x_t, t, z):
    favoured = jnp.where(z[:, 0] > 0, 0, 1)[:, None, None]
    logits = jnp.where(jnp.arange(self.width) == favoured, 3.0, 0.0)
    return jnp.where(jnp.arange(self.width) < V, logits, masking.NEG_INF) * jnp.ones(x_t.shape + (1,))


def test_vmd_resampled_z_agrees_with_the_clamped_tokens():
  """Clamping x_0 = 0 makes z_0 > 0 likely a posteriori (p = 0.95): free symbols are then 0
  with probability ~0.87, against 0.48 with z from the prior."""
  method = method_for("vmd")
  model = SignOfZ(method.model_cfg.padded_vocab)
  clamped = np.array([0, FREE, FREE, FREE])
  runs = [SamplerSettings(steps=2, cache=False, latent_init=init) for init in ("prior", "resample")]
  # one candidate leaves nothing to choose: z is a prior draw again, for one extra call
  runs.append(SamplerSettings(steps=2, cache=False, latent_init="resample", latent_candidates=1))
  fn = jax.jit(lambda key: [method.sample(model, key, 2000, s, clamped) for s in runs])
  (prior, prior_info), (resampled, resampled_info), (single, single_info) = fn(jax.random.key(0))
  prior_zero, resampled_zero, single_zero = (float(np.mean(np.asarray(x)[:, 1:] == 0)) for x in (prior, resampled, single))
  assert 0.43 < prior_zero < 0.53 and 0.82 < resampled_zero < 0.92 and 0.43 < single_zero < 0.53
  assert int(single_info["nfe"]) == 3 + 1
  assert (np.asarray(resampled)[:, 0] == 0).all()
  assert int(resampled_info["nfe"]) == int(prior_info["nfe"]) + 16 == 3 + 16
  assert method.sampler_used(runs[1])["latent_candidates"] == 16
  with pytest.raises(ValueError, match="clamped"):
    method.sample(model, jax.random.key(0), 4, runs[1])


def test_every_method_implements_the_protocol():
  for variant in VARIANTS:
    method = method_for(variant)
    assert isinstance(method, Method)
    used = method.sampler_used(SamplerSettings(steps=5, latent_steps=2, top_p=0.9, noise_bits=64))
    assert (used["steps"], used["N_x"], used["top_p"], used["noise_bits"]) == (5, 5, 0.9, 64)
    assert used["N_y"] == method.latent_steps(SamplerSettings(steps=5, latent_steps=2))
    described = method.describe()
    assert described["mask_schedule"] == "linear" and "schedule" not in described
    assert ("latent_schedule" in described) == (method.name in ("co_ladd", "di_ladd"))
  assert {method_for(v).name for v in VARIANTS} <= set(METHODS)


def test_truncation_keeps_the_top_k_and_the_nucleus():
  log_probs = jnp.log(jnp.array([0.15, 0.5, 0.05, 0.3]))
  expect = {(2, 1.0): [0, 0.625, 0, 0.375], (0, 0.7): [0, 0.625, 0, 0.375],
            (0, 0.9): [0.15 / 0.95, 0.5 / 0.95, 0, 0.3 / 0.95], (3, 0.5): [0, 1, 0, 0], (0, 1.0): [0.15, 0.5, 0.05, 0.3]}
  truncated = jax.jit(sampling.truncated, static_argnums=(1, 2))
  for (top_k, top_p), probs in expect.items():
    np.testing.assert_allclose(jnp.exp(truncated(log_probs, top_k, top_p)), probs, atol=1e-6)
  np.testing.assert_array_equal(truncated(log_probs, 4, 1.0), log_probs)
  # through the sampler: a fixed distribution at every position, truncated to its top 2
  logits = jnp.full((1, 1, 8), masking.NEG_INF).at[..., :4].set(log_probs)
  denoise = lambda x_t, t: masking.subs_log_probs(jnp.broadcast_to(logits, x_t.shape + (8,)), x_t, 4, 4)
  x, _ = jax.jit(lambda key: sampling.ancestral_sample(denoise, key, (4000, 2), Schedule("linear"),
                                   SamplerSettings(steps=3, top_k=2, cache=False), 4, False))(jax.random.key(0))
  freq = np.bincount(np.asarray(x).ravel(), minlength=5) / x.size
  np.testing.assert_allclose(freq, [0, 0.625, 0, 0.375, 0], atol=0.03)
  for bad in (dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(noise_bits=16), dict(latent_init="posterior")):
    with pytest.raises(ValueError):
      SamplerSettings(**bad)


def test_64_bit_gumbel_noise_reaches_the_far_tail_and_is_gumbel():
  # all-zero words give v = 2^-65: u = 1 - 2^-66 (g = log(2^66)) or u = 2^-66; v = 1/2: u = 3/4 or 1/4
  sign = jnp.array([False, True, False, True])
  hi = jnp.array([0, 0, 2**31, 2**31], jnp.uint32)
  g = jax.jit(sampling.gumbel_from_bits)(sign, hi, jnp.zeros(4, jnp.uint32))
  np.testing.assert_allclose(g, [66 * math.log(2), -math.log(66 * math.log(2)), -math.log(math.log(4 / 3)),
                                 -math.log(math.log(4))], rtol=1e-5)
  noise = np.asarray(jax.jit(lambda key: sampling.gumbel(key, (200000,), 64))(jax.random.key(0)), np.float64)
  assert abs(noise.mean() - 0.5772) < 0.01 and abs(noise.var() - math.pi**2 / 6) < 0.03
  log_probs = jnp.broadcast_to(jnp.log(jnp.array([0.7, 0.2, 0.1])), (20000, 3))
  picks = jax.jit(lambda key: sampling.categorical(key, log_probs, 64))(jax.random.key(1))
  np.testing.assert_allclose(np.bincount(np.asarray(picks), minlength=3) / 20000, [0.7, 0.2, 0.1], atol=0.015)


def char_dataset(seq_len=12):
  return Dataset(vocab_size=7, seq_len=seq_len, train_examples=None, eval_examples=None, shuffle_seed=0,
                 tokenizer=CharTokenizer(" ,abeot"), is_character_level=True, mask_symbol="_")


def test_prompt_suffix_and_infill_layout_and_errors():
  data = char_dataset()
  tok = data.tokenizer
  clamped = clamped_from_text(data, prompt="to be", suffix=", ")
  np.testing.assert_array_equal(clamped[:5], tok.encode("to be"))
  np.testing.assert_array_equal(clamped[-2:], tok.encode(", "))
  assert (clamped[5:-2] == FREE).all()
  clamped = clamped_from_text(data, infill="to __, a_")
  np.testing.assert_array_equal(clamped, np.concatenate([tok.encode("to "), [FREE, FREE], tok.encode(", a"), [FREE] * 4]))
  for kwargs, message in ((dict(prompt="to be, to be, "), "do not fit"), (dict(infill="to be"), "no gap"),
                          (dict(prompt="toby"), "'y'"), (dict(prompt="to", infill="_"), "not both"),
                          (dict(prompt="to be, to be"), "nothing is left")):
    with pytest.raises(ValueError, match=message):
      clamped_from_text(data, **kwargs)
  assert data.decode(np.where(clamped == FREE, 7, clamped)) == "to __, a____"


def test_blockwise_generation_continues_the_kept_tail_and_stops_at_eos():
  calls = []

  def draw_block(clamped, block):  # new tokens: 10 * block + position; clamps are kept
    calls.append(clamped.copy())
    return np.where(clamped == FREE, 10 * block + np.arange(clamped.shape[1]), clamped)

  first = np.full((2, 6), FREE)
  first[:, :2] = [[7, 8], [8, 7]]
  rows = blockwise(draw_block, first, 13, 2)
  np.testing.assert_array_equal(rows[0], [7, 8, 2, 3, 4, 5, 12, 13, 14, 15, 22, 23, 24])
  assert len(calls) == 3 and all((c[:, 2:] == FREE).all() for c in calls[1:])
  np.testing.assert_array_equal(calls[2][:, :2], [[14, 15], [14, 15]])  # the last two tokens of block 1
  calls.clear()
  rows = blockwise(draw_block, first, 40, 2, eos_id=13)  # block 1 emits 13 in every row
  assert len(calls) == 2 and [len(r) for r in rows] == [8, 8] and rows[1][-1] == 13
  with pytest.raises(ValueError, match="block_keep"):
    blockwise(draw_block, first, 40, 6)
