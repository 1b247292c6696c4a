"""Known-answer tests of the N-step bound of the N-step sampler (method.md §7).

Scripted "ideal" networks output the true conditionals of toys whose exact -log p(x0) is
known; the real `nstep_nelbo` of every method then must never fall below it (by more than
4 computed standard errors of its Monte-Carlo mean) and must equal it where the bound is
tight. No transformer is compiled: the networks are a few array operations.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import ladd_binsaw, toys
from ladd.diffusion import discrete_bound, gaussian, sampling
from ladd.diffusion.schedules import Schedule
from ladd.methods import build_method

V = 4  # copy / product toys: L = 2 positions over V symbols
BATCH = 4096
NEG = -1e6


def toy_method(name, schedule="linear", **overrides):
  """The method on the copy toy (L = 2, V symbols). eps = 0.1, not 1e-4: the final fill
  then meets masked positions often enough (2 eps per position) that the batch samples it,
  and the computed standard error covers it."""
  if name == "di_ladd":
    config = ladd_binsaw.get_config(overrides.pop("variant") + "_tiny")
    config.data.update(seq_len=2)
    config.latent.update(codebook_size=V, slots=1, time_shift=overrides.pop("time_shift", 1.0),
                         lead=overrides.pop("lead", 0.0))
  else:
    config = toys.get_config(f"{name},copy,tiny")
  config.vae.update(**overrides)
  config.diffusion.update(schedule=schedule, eps=0.1)
  return build_method(config, V)


def copy_batch(seed=0, batch=BATCH):
  x1 = np.random.default_rng(seed).integers(0, V, (batch, 1))
  return jnp.asarray(np.concatenate([x1, x1], 1), jnp.int32)


def bounds(cases, x0, seed=1):
  """[{term: per-sequence values}] of method.nstep_nelbo for each (method, model, steps,
  latent_steps) in `cases`, all in one compiled function (compilation dominates)."""
  def run(x0, key):
    keys = jax.random.split(key, len(cases))
    return [method.nstep_nelbo(model, x0, k, steps, latent_steps)
            for (method, model, steps, latent_steps), k in zip(cases, keys)]
  return [{k: np.asarray(v, np.float64) for k, v in out.items()} for out in jax.jit(run)(x0, jax.random.key(seed))]


def bound_per_sequence(method, model, x0, steps, latent_steps=0):
  return bounds([(method, model, steps, latent_steps)], x0)[0]


def assert_at_least(values, exact):
  """mean(values) >= exact up to 4 standard errors of the mean."""
  gap, se = float(np.mean(values - exact)), float(np.std(values - exact) / np.sqrt(values.size))
  assert gap >= -4 * se - 1e-6, (gap, se)
  return gap, se


def assert_equal(values, exact, extra=0.0):
  gap, se = assert_at_least(values, exact)
  assert abs(gap - extra) <= 4 * se + 1e-5, (gap, extra, se)


def one_hot_logits(values, width):
  """Logits with all mass on `values` (int [..]) over `width` ids."""
  return jnp.where(jax.nn.one_hot(values, width, dtype=jnp.bool_), 0.0, NEG)


def copy_conditional(x_t, mask_id):
  """p(x^i | x_t) of x1 = x2 ~ U{V}: the other position when it is revealed, else uniform."""
  other = x_t[:, ::-1]
  return jnp.where((other != mask_id)[..., None], one_hot_logits(jnp.minimum(other, V - 1), V + 1),
                   jnp.zeros(x_t.shape + (V + 1,)))


# --- MDLM ---------------------------------------------------------------------------------


def copy_task_closed_form(eps, steps):
  """Ideal MDLM on the copy task (linear schedule, float64): a masked position costs log V at
  stage k iff the other is masked too, so B_N = 2 log V [sum_{k<N} r_k (1 - beta_k)^2 + (1 - beta_N)^2]."""
  alpha = (1 - 2 * eps) * (1 - np.linspace(1.0, eps, steps + 1)) + eps
  keep = (alpha - alpha[0]) / (1 - alpha[0])
  reveal = np.append((alpha[1:] - alpha[:-1]) / (1 - alpha[:-1]), 1.0)
  return 2 * math.log(V) * float(np.sum(reveal * (1 - keep) ** 2))


def test_uniform_model_gives_length_times_log_vocab_for_every_schedule_and_steps():
  uniform = lambda x_t, t: jnp.zeros(x_t.shape + (V + 1,))
  cases = [(toy_method("mdlm", schedule), uniform, steps, 0)
           for schedule in ("linear", "cosine", "polynomial") for steps in (1, 4, 16)]
  for values in bounds(cases, copy_batch()):
    assert_equal(values["nelbo"], 2 * math.log(V))


def test_mdlm_is_tight_on_a_product_distribution_at_every_steps():
  probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.05, 0.15, 0.3, 0.5]])
  rng = np.random.default_rng(3)
  x0 = np.stack([rng.choice(V, BATCH, p=p) for p in probs], 1)
  exact = -np.log(probs[0, x0[:, 0]] * probs[1, x0[:, 1]])
  logits = jnp.asarray(np.concatenate([np.log(probs), np.full((2, 1), NEG)], 1), jnp.float32)
  product = lambda x_t, t: jnp.broadcast_to(logits, x_t.shape + (V + 1,))
  method = toy_method("mdlm", "cosine")
  for values in bounds([(method, product, steps, 0) for steps in (1, 3, 16)], jnp.asarray(x0, jnp.int32)):
    assert_equal(values["nelbo"], exact)


def test_mdlm_copy_task_bound_matches_its_closed_form_and_decreases_to_the_continuous_one():
  method = toy_method("mdlm")
  ideal = lambda x_t, t: copy_conditional(x_t, method.mask_id)
  eps = method.schedule.eps
  closed = {n: copy_task_closed_form(eps, n) for n in (1, 4, 16)}
  for values, value in zip(bounds([(method, ideal, n, 0) for n in closed], copy_batch()), closed.values()):
    assert_equal(values["nelbo"], value)
  # one step is a product of marginals: 2 log V (at the default eps = 1e-4)
  assert copy_task_closed_form(1e-4, 1) == pytest.approx(2 * math.log(V), rel=1e-3)
  assert closed[1] > closed[4] > closed[16] > math.log(V)
  # N -> infinity: the continuous-time bound with its end terms, 2 log V [int_0^b (1 - beta)
  # dbeta + (1 - b)^2] with b = beta_N = 1 - 2 eps, which tends to the exact log V as eps -> 0
  b = 1 - 2 * eps
  assert copy_task_closed_form(eps, 4000) == pytest.approx(2 * math.log(V) * (b - b**2 / 2 + (1 - b) ** 2), rel=1e-3)
  assert copy_task_closed_form(1e-4, 4000) == pytest.approx(math.log(V), rel=1e-3)


# --- VADD ---------------------------------------------------------------------------------


class IdealZMixture:
  """VADD on the copy task: z ~ N(0, 1) picks the symbol c(z) = floor(V Phi(z)); a masked
  position is the other position where revealed, else c(z). The recognition model is the
  prior, so the importance weights are exactly 1[c(z_k) = x0^1]."""

  def __init__(self, mask_id):
    self.mask_id = mask_id

  def __call__(self, x_t, t, z):
    symbol = jnp.clip(jnp.floor(V * jax.scipy.stats.norm.cdf(z[:, 0])), 0, V - 1).astype(jnp.int32)
    other = x_t[:, ::-1]
    target = jnp.where(other != self.mask_id, jnp.minimum(other, V - 1), symbol[:, None])
    return one_hot_logits(target, V + 1)

  def recognition(self, x0, masked):
    return jnp.zeros((x0.shape[0], 1)), jnp.zeros((x0.shape[0], 1))


class UniformZModel(IdealZMixture):
  def __init__(self):
    super().__init__(V)

  def __call__(self, x_t, t, z):
    return jnp.zeros(x_t.shape + (V + 1,))


def importance_sampling_gap(k):
  """E[-log(H / K)] - log V for H ~ Binomial(K, 1/V) hits (H = 0 has probability < 1e-30)."""
  hits = np.arange(1, k + 1)
  return float(np.sum(stats.binom.pmf(hits, k, 1 / V) * -np.log(hits / k))) - math.log(V)


def test_vadd_ideal_mixture_is_tight_at_one_step_where_mdlm_pays_two_log_v():
  k = 256
  method = toy_method("vadd", importance_samples=k, latent_dim=1)
  values = bound_per_sequence(method, IdealZMixture(method.mask_id), copy_batch(batch=1024), 1)["nelbo"]
  # every stage reveals a non-empty set of masked positions with probability 1 - O(eps^2)
  assert_equal(values, math.log(V), extra=importance_sampling_gap(k))
  assert copy_task_closed_form(method.schedule.eps, 1) > 1.6 * math.log(V)  # MDLM on the same grid


def test_vadd_uniform_model_gives_length_times_log_vocab():
  method = toy_method("vadd", importance_samples=2, latent_dim=1)
  for values in bounds([(method, UniformZModel(), steps, 0) for steps in (1, 4)], copy_batch()):
    assert_equal(values["nelbo"], 2 * math.log(V))


# --- VMD ----------------------------------------------------------------------------------


class SoftGlobalLatent:
  """VMD with p(x^i = v | z) = softmax_v(2 z (v - 1.5)) independently over positions; the
  recognition model q(z | x0) = N(0.4 (x0^1 + x0^2 - 3), 0.5^2)."""

  def __call__(self, x_t, t, z):
    logits = 2.0 * z[:, :1, None] * (jnp.arange(V) - 1.5)
    return jnp.concatenate([jnp.broadcast_to(logits, x_t.shape + (V,)), jnp.full(x_t.shape + (1,), NEG)], -1)

  def recognition(self, x0, masked):
    # a proposal shown masked positions would move away from the quadrature's q(z | x0)
    mean = 0.4 * (x0.sum(-1, keepdims=True) - 3.0) + 3.0 * masked.mean(-1, keepdims=True)
    return mean.astype(jnp.float32), jnp.full(mean.shape, 2 * math.log(0.5))


def vmd_quadrature(x0):
  """(exact -log p(x0), the bound E_q[-log p(x0 | z)] + KL(q || p)) per sequence, computed
  for the V^2 distinct sequences and indexed."""
  pairs = np.stack(np.meshgrid(np.arange(V), np.arange(V), indexing="ij"), -1).reshape(-1, 2)
  exact, elbo = _vmd_quadrature(pairs)
  index = x0[:, 0] * V + x0[:, 1]
  return exact[index], elbo[index]


def _vmd_quadrature(x0):
  z = np.linspace(-10, 10, 8001)
  log_p = 2.0 * z[:, None] * (np.arange(V) - 1.5)
  log_p -= np.logaddexp.reduce(log_p, axis=1, keepdims=True)
  log_lik = log_p[:, x0[:, 0]] + log_p[:, x0[:, 1]]  # [Z, B]
  prior = stats.norm.pdf(z)[:, None]
  exact = -np.log(np.trapezoid(np.exp(log_lik) * prior, z, axis=0))
  mean, std = 0.4 * (x0.sum(-1) - 3.0), 0.5
  q = stats.norm.pdf(z[:, None], mean, std)
  kl = np.log(1 / std) + (std**2 + mean**2) / 2 - 0.5
  return exact, np.trapezoid(q * -log_lik, z, axis=0) + kl


def test_vmd_bound_is_the_global_latent_elbo_and_above_the_exact_nll():
  """Whatever vae.vmd_posterior is, the proposal is q(z | x0)."""
  x0 = np.random.default_rng(5).integers(0, V, (BATCH, 2))
  exact, elbo = vmd_quadrature(x0)
  cases = [(toy_method("vmd", latent_dim=1, vmd_posterior=posterior), SoftGlobalLatent(), steps, 0)
           for posterior, steps in (("x0_xt", 4), ("x0", 1))]
  for values in bounds(cases, jnp.asarray(x0, jnp.int32)):
    assert_equal(values["nelbo"], elbo)  # the N-step bound given z is tight for a product given z
    gap, _ = assert_at_least(values["nelbo"], exact)
    assert gap > 0.01  # q is not the posterior: the bound is strict here


# --- Di-LADD ------------------------------------------------------------------------------


class IdealCopyCodes:
  """Di-LADD on the copy task with the code y = x1 (codebook = identity, K = V): the true
  conditionals of (x1, x2, y) given the revealed ones."""

  def __init__(self, method):
    self.mask_id, self.code_mask = method.mask_id, method.code_mask
    self.encoder = lambda x0: jax.nn.one_hot(x0[:, :1], V)
    self.quantizer = IdentityCodebook()

  def denoiser(self, x_t, vectors, t_x, t_y, latent_masked):
    code = jnp.where(latent_masked[:, 0], self.mask_id, jnp.argmax(vectors[:, 0], -1))
    other = x_t[:, ::-1]
    known = jnp.where(code != self.mask_id, code, jnp.where(other[:, 0] != self.mask_id, other[:, 0], other[:, 1]))
    revealed = known != self.mask_id
    token = jnp.where(revealed[:, None, None], one_hot_logits(jnp.minimum(known, V - 1)[:, None], V + 1),
                      jnp.zeros((1, 1, V + 1)))
    token = jnp.where((other != self.mask_id)[..., None], one_hot_logits(jnp.minimum(other, V - 1), V + 1), token)
    any_token = jnp.where(x_t[:, 0] != self.mask_id, x_t[:, 0], x_t[:, 1])
    code_logits = jnp.where((any_token != self.mask_id)[:, None, None],
                            one_hot_logits(jnp.minimum(any_token, V - 1)[:, None], V + 1), jnp.zeros((1, 1, V + 1)))
    return jnp.broadcast_to(token, x_t.shape + (V + 1,)), code_logits


class IdentityCodebook:
  codebook = jnp.eye(V)

  def __call__(self, z_e, update):
    assert not update  # evaluation never moves the codebook
    return jnp.argmax(z_e, -1).astype(jnp.int32), z_e


def test_di_ladd_with_the_code_y_equal_x1():
  seq, joint = toy_method("di_ladd", variant="di_seq"), toy_method("di_ladd", variant="di_joint")
  lead = toy_method("di_ladd", variant="di_joint", lead=0.5)  # codes reach their path's end at u = 0.55
  cases = [(method, IdealCopyCodes(method), steps, 0) for method in (seq, joint, lead) for steps in (1, 8)]
  values = bounds(cases, copy_batch())
  for by_steps in values:
    assert_at_least(by_steps["nelbo"], math.log(V))
  # sequential: the code costs log V, then the tokens are certain: tight at N = 1
  assert_equal(values[0]["nelbo"], math.log(V))
  assert_equal(values[0]["elbo_x"], 0.0)
  # joint: one step reveals codes and tokens independently: loose, and more steps help
  assert np.mean(values[2]["nelbo"]) > 2 * math.log(V) > np.mean(values[3]["nelbo"])


class UniformCodes(IdealCopyCodes):
  def denoiser(self, x_t, vectors, t_x, t_y, latent_masked):
    return jnp.zeros(x_t.shape + (V + 1,)), jnp.zeros((x_t.shape[0], 1, V + 1))


def test_di_ladd_uniform_model_pays_log_v_per_token_and_log_k_per_code():
  methods = [toy_method("di_ladd", variant=variant, time_shift=0.5) for variant in ("di_seq", "di_joint")]
  for values in bounds([(method, UniformCodes(method), 3, 2) for method in methods], copy_batch()):
    assert_equal(values["elbo_x"], 2 * math.log(V))
    assert_equal(values["elbo_y"], math.log(V))


def test_chain_matches_the_sampler():
  """The chain's reveal probabilities are the sampler's unmask probabilities, beta_0 = 0,
  and the final stage reveals everything."""
  schedule = Schedule("cosine")
  grid = sampling.time_grid(5, schedule.eps)
  chain = discrete_bound.mask_chain(schedule, grid)
  alpha = schedule.alpha(grid)
  np.testing.assert_allclose(chain.reveal[:-1], (alpha[1:] - alpha[:-1]) / (1 - alpha[:-1]), rtol=1e-6)
  assert float(chain.keep[0]) == 0.0 and float(chain.reveal[-1]) == 1.0
  # beta_{k+1} = beta_k + r_k (1 - beta_k): the chain's marginals follow from its steps
  np.testing.assert_allclose(chain.keep[1:], chain.keep[:-1] + chain.reveal[:-1] * (1 - chain.keep[:-1]), atol=1e-6)


# --- Co-LADD (stochastic encoder) ---------------------------------------------------------

PRODUCT = np.array([[0.7, 0.1, 0.1, 0.1], [0.05, 0.15, 0.3, 0.5]])


class GaussianLatentProduct:
  """Co-LADD where the encoder mean is 0 and sigma0 = 1, so y0 ~ N(0, I) whatever x0 is
  (q(y0 | x0) is the true latent marginal); y0-hat = alpha(t) y_t = E[y0 | y_t] is ideal;
  the tokens are the product distribution PRODUCT, independent of y."""

  def __init__(self, dims, schedule):
    self.dims, self.schedule = dims, schedule
    self.logits = jnp.asarray(np.concatenate([np.log(PRODUCT), np.full((2, 1), NEG)], 1), jnp.float32)

  def encoder(self, x0):
    return jnp.zeros((x0.shape[0], 1, self.dims))

  def denoiser(self, x_t, y, t_x, t_y, latent_masked=None):
    return jnp.broadcast_to(self.logits, x_t.shape + (V + 1,)), self.latent_denoiser(y, t_y)

  def latent_denoiser(self, y_t, t):
    return self.schedule.alpha(t)[:, None, None] * y_t


def gaussian_latent_excess(schedule, times):
  """Per latent dim, the latent part of the bound for y0 ~ N(0, 1) with the ideal y0-hat:
  E||y0 - y0-hat||^2 = sigma_t^2, so sum_k 1/2 (SNR_{k+1} - SNR_k) sigma_k^2 + the decoder
  1/2 log(2 pi / SNR_N) + 1/2 alpha_N^2 + the prior KL - the entropy 1/2 log(2 pi e)."""
  snr = np.asarray(schedule.snr(times), np.float64)
  var = 1.0 / (1.0 + snr)
  steps = np.sum(0.5 * (snr[1:] - snr[:-1]) * var[:-1])
  decoder = 0.5 * math.log(2 * math.pi / snr[-1]) + 0.5 * (1 - var[-1])
  prior = -0.5 * math.log(var[0])  # 1/2 (alpha^2 E[y0^2] + sigma^2 - 1 - log sigma^2)
  return steps + decoder + prior - 0.5 * math.log(2 * math.pi * math.e)


def co_ladd_method(variant, sigma0_mode="fixed", lead=0.0):
  config = ladd_binsaw.get_config(variant + "_tiny")
  config.data.update(seq_len=2)
  config.diffusion.update(eps=0.01)
  config.latent.update(sigma0_mode=sigma0_mode, sigma0=1.0, l2_norm=False, dim=2,
                       time_shift=0.5 if variant == "co_joint" else 1.0, lead=lead)
  return build_method(config, V)


def test_co_ladd_stochastic_encoder_bound_has_its_known_latent_excess():
  joint, sequential, lead = co_ladd_method("co_joint"), co_ladd_method("co_seq"), co_ladd_method("co_joint", lead=0.6)
  assert joint.has_nstep_bound and sequential.has_nstep_bound
  assert not co_ladd_method("co_seq", sigma0_mode="none").has_nstep_bound
  rng = np.random.default_rng(7)
  x0 = np.stack([rng.choice(V, BATCH, p=p) for p in PRODUCT], 1)
  exact = -np.log(PRODUCT[0, x0[:, 0]] * PRODUCT[1, x0[:, 1]])
  eps = joint.schedule.eps
  # (method, N, N_y, the latent's times): joint on the shifted token grid, sequential on its own
  cases = [(joint, n, 0, gaussian.time_shift(sampling.time_grid(n, eps), 0.5)) for n in (1, 4)]
  cases += [(sequential, n, n_y, sampling.time_grid(n_y, eps)) for n, n_y in ((1, 2), (4, 3))]
  # the leading latent's chain rests at its end for the last stages (KL 0 there)
  cases += [(lead, 4, 0, gaussian.latent_path(sampling.time_grid(4, eps), 0.5, 0.6, eps)[0])]
  runs = [(m, GaussianLatentProduct(2, m.latent_schedule), n, n_y) for m, n, n_y, _ in cases]
  excess = [2 * gaussian_latent_excess(joint.latent_schedule, times) for *_, times in cases]
  for values, gap in zip(bounds(runs, jnp.asarray(x0, jnp.int32)), excess):
    assert_equal(values["elbo_x"], exact)  # the tokens ignore y: their factorised chain is tight
    assert_equal(values["nelbo"], exact + gap)
  assert excess[0] > excess[1] > 0 and excess[2] > excess[3] > 0  # the latent chain's gap closes as N grows
  assert 2 * gaussian_latent_excess(joint.latent_schedule, sampling.time_grid(2000, eps)) < 0.01
