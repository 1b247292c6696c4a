"""Every number a method labels a bound is one (method.md §7): an IDEAL scripted network
(the true conditionals of a toy whose -log p(x0) is known, computed by enumerating its
support) is run through each method's real `nelbo()`, and the Monte-Carlo mean must not
fall below the exact NLL by more than 4 standard errors, and must equal it where the bound
is tight. Regressions: the old estimators gave 5/6 log V (Di-LADD, independent times),
1.83 / 2.30 for log 8 = 2.08 (Di-LADD codes under a time shift without its Jacobian),
(1 - 2 eps) L log V (no end terms); VADD's double ELBO (below log V here) and VMD with
q(z | x0, x_t) are labelled objectives, not bounds."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toys as toy_configs
from ladd import summary
from ladd.diffusion import gaussian
from ladd.methods import build_method

V = 8  # copy toy: x1 = x2 ~ U{V}, so -log p(x0) = log V for every sequence
COPY = np.stack([np.arange(V)] * 2, 1)
SIGMAS = 4.0


def copy_config(method, **latent):
  config = toy_configs.get_config(f"{method},copy,tiny")
  config.data.update(toy_vocab=V)
  config.latent.update(slots=1, dim=1, codebook_size=V, **latent)
  return config


def copy_batch(repeats=512):
  return jnp.asarray(np.tile(COPY, (repeats, 1)), jnp.int32)


def mc_nelbo(method, model, x0, draws, key="nelbo"):
  """(mean, standard error) of the per-sequence estimate over `draws` keys x the batch."""
  keys = jax.random.split(jax.random.key(0), draws)
  values = np.asarray(jax.jit(jax.vmap(lambda k: method.nelbo(model, x0, k)[key]))(keys), np.float64)
  return values.mean(), values.std() / math.sqrt(values.size)


def assert_bound(mean, se, exact, tight):
  assert mean >= exact - SIGMAS * se, (mean, se, exact)
  if tight:
    assert abs(mean - exact) <= SIGMAS * se + 0.01 * exact, (mean, se, exact)


class Support:
  """The true conditionals of a distribution with support `table` [N, L] (probabilities
  `probs`), given which tokens (and latent ids) are visible."""

  def __init__(self, table, mask_id, probs=None):
    self.table = jnp.asarray(table, jnp.int32)
    n = self.table.shape[0]
    self.log_probs = jnp.log(jnp.full((n,), 1.0 / n) if probs is None else jnp.asarray(probs))
    self.mask_id = mask_id

  def posterior(self, x_t, log_lik=0.0):
    seen = x_t[:, None, :]
    consistent = jnp.all((seen == self.mask_id) | (seen == self.table[None]), -1)
    return jax.nn.softmax(jnp.where(consistent, self.log_probs + log_lik, -jnp.inf), -1)

  def logits(self, post, values, width):
    """log of the posterior marginal of `values` [N, S] at each of its S slots: [B, S, width]."""
    marginal = jnp.einsum("bn,nsw->bsw", post, jax.nn.one_hot(values, width))
    return jnp.log(marginal + 1e-30)


class IdealMdlm:
  def __init__(self, support, width):
    self.support, self.width = support, width

  def __call__(self, x_t, t, z=None):
    del t, z
    return self.support.logits(self.support.posterior(x_t), self.support.table, self.width)


# --- MDLM: the end terms (the uniform model on every schedule: tests/test_diffusion.py) ----

def test_ideal_mdlm_is_tight_on_the_copy_toy():
  """With eps = 0.05 the old estimator (no end terms) gave about (1 - 2 eps) log V."""
  config = copy_config("mdlm")
  config.diffusion.update(eps=0.05)
  method = build_method(config, V)
  assert method.quantities["nelbo"] == "bound"
  mean, se = mc_nelbo(method, IdealMdlm(Support(COPY, V), V + 1), copy_batch(), 8)
  # tight up to the final fill's O(eps^2): both tokens still masked at eps are filled independently
  assert_bound(mean, se, math.log(V), tight=True)


# --- Di-LADD: one noise path, the Jacobian, the end terms ---------------------------------

class IdealDi:
  """y = x1 as the one code; the encoder writes the id, the codebook is k -> [k]."""

  def __init__(self, support):
    self.support = support
    self.codes = support.table[:, :1]
    self.quantizer = self  # the method reads model.quantizer.codebook and calls model.quantizer
    self.codebook = jnp.arange(V, dtype=jnp.float32)[:, None]

  def encoder(self, x0, *args, **kwargs):
    return x0[:, :1, None].astype(jnp.float32)

  def __call__(self, z_e, update=False):
    ids = jnp.round(z_e[..., 0]).astype(jnp.int32)
    return ids, self.codebook[ids]

  def denoiser(self, x_t, z, t_x, t_y, latent_masked):
    codes_t = jnp.where(latent_masked, V, jnp.round(z[..., 0]).astype(jnp.int32))
    seen = codes_t[:, None, :]
    codes_ok = jnp.all((seen == V) | (seen == self.codes[None]), -1)
    post = self.support.posterior(x_t, jnp.where(codes_ok, 0.0, -jnp.inf))
    return (self.support.logits(post, self.support.table, V + 1), self.support.logits(post, self.codes, V + 1))


DI_CASES = {  # name: (latent settings, old value where it was wrong)
    "joint": (dict(schedule="joint"), None),
    "joint_independent_times": (dict(schedule="joint", independent_times=True), 5 / 6 * math.log(V)),
    "joint_shift_0.5": (dict(schedule="joint", time_shift=0.5), 1.827),
    "joint_shift_2": (dict(schedule="joint", time_shift=2.0), 2.299),
    "joint_lead_0.6_shift_0.5": (dict(schedule="joint", lead=0.6, time_shift=0.5), None),
    "sequential_shift_0.5": (dict(schedule="sequential", time_shift=0.5), None),
}


@pytest.mark.parametrize("case", list(DI_CASES))
def test_di_ladd_bound_is_tight_for_the_ideal_model(case):
  method = build_method(copy_config("di_ladd", **DI_CASES[case][0]), V)
  assert method.quantities["nelbo"] == "bound"
  mean, se = mc_nelbo(method, IdealDi(Support(COPY, V)), copy_batch(), 16)
  assert_bound(mean, se, math.log(V), tight=True)  # -log p(x0) = -log p(x0, y = x1)


# --- Co-LADD: decoder term, entropy, analytic weight --------------------------------------

class IdealCo:
  """y0 = c (x1 - (V - 1)/2) + sigma0 xi; the true posterior of the Gaussian mixture."""

  def __init__(self, support, schedule, sigma0, scale=1.0):
    self.support, self.schedule, self.sigma0 = support, schedule, sigma0
    self.means = scale * (support.table[:, :1, None].astype(jnp.float32) - (V - 1) / 2)  # [N, 1, 1]
    self.scale = scale

  def encoder(self, x0, *args, **kwargs):
    return self.scale * (x0[:, :1, None].astype(jnp.float32) - (V - 1) / 2)

  def _posterior(self, x_t, y, t_y):
    a = self.schedule.alpha(t_y)[:, None, None, None]
    var = a**2 * self.sigma0**2 + 1.0 - a**2
    diff = y[:, None] - a * self.means[None]  # [B, N, S, d]
    post = self.support.posterior(x_t, -0.5 * jnp.sum(diff**2 / var, (2, 3)))
    component_means = self.means[None] + a * self.sigma0**2 / var * diff
    return post, jnp.einsum("bn,bnsd->bsd", post, component_means)

  def denoiser(self, x_t, y, t_x, t_y, latent_masked=None):
    post, y0_hat = self._posterior(x_t, y, t_y)
    return self.support.logits(post, self.support.table, V + 1), y0_hat

  def latent_denoiser(self, y, t):
    return self._posterior(jnp.full((y.shape[0], 2), V), y, t)[1]


CO_CASES = {
    "joint_shift_0.5": dict(schedule="joint", time_shift=0.5),
    "joint_lead_0.6": dict(schedule="joint", lead=0.6),
    "joint_linear_schedule": dict(schedule="joint", gaussian_schedule="linear"),
    "sequential": dict(schedule="sequential"),
}


@pytest.mark.parametrize("case", list(CO_CASES))
def test_co_ladd_with_a_gaussian_encoder_bounds_and_is_tight_for_the_ideal_model(case):
  """Before: no decoder term (about 3.2 nats too high per dim) and a finite-difference weight
  at negative times under a time shift below 1."""
  method = build_method(copy_config("co_ladd", sigma0_mode="fixed", sigma0=0.5, **CO_CASES[case]), V)
  assert method.quantities["nelbo"] == "bound"
  model = IdealCo(Support(COPY, V), method.latent_schedule, 0.5)
  mean, se = mc_nelbo(method, model, copy_batch(), 16)
  # the true posterior q(y0 | x0) makes the variational gap 0; what is left is the Gaussian
  # decoder at the path's end, O(eps / sigma0^2)
  assert_bound(mean, se, math.log(V), tight=True)


def test_deterministic_co_ladd_is_an_objective_and_a_learned_sigma0_needs_the_elbo():
  assert build_method(copy_config("co_ladd"), V).quantities["nelbo"] == "objective"
  with pytest.raises(ValueError, match="y_weighting"):
    build_method(copy_config("co_ladd", sigma0_mode="learned"), V)


def test_learned_sigma0_gets_the_entropy_gradient():
  """Without the entropy the loss only shrinks sigma0: with it, sigma0 -> 0 costs d log(1/sigma0)."""
  method = build_method(copy_config("co_ladd", sigma0_mode="learned", y_weighting="elbo"), V)
  model = IdealCo(Support(COPY, V), method.latent_schedule, 0.5)
  x0 = copy_batch(16)

  def loss(log_sigma0):
    scripted = types.SimpleNamespace(encoder=LearnedEncoder(model, log_sigma0), denoiser=model.denoiser,
                                     latent_denoiser=model.latent_denoiser)
    return method.loss(scripted, x0, jax.random.key(0), 0)[0]

  assert float(jax.jit(jax.grad(loss))(jnp.log(jnp.float32(1e-3)))) < 0  # at a tiny sigma0 the loss falls as it grows


class LearnedEncoder:
  def __init__(self, ideal, log_sigma0):
    self.ideal, self.log_sigma0 = ideal, jnp.asarray(log_sigma0)

  def __call__(self, x0, *args, **kwargs):
    return self.ideal.encoder(x0)


# --- VADD and VMD: which numbers are bounds -----------------------------------------------

class ScriptedVae:
  """Copy toy with V = 2: the posterior encodes x1 in the sign of z only when every token
  is masked; the decoder copies a visible token, else reads x1 from the sign of z (k = 0:
  the decoder ignores z and is the ideal masked-diffusion denoiser)."""

  def __init__(self, k, mu=0.8, std=0.3):
    self.k, self.mu, self.log_var = k, mu, 2 * math.log(std)
    self.recognition = self._recognition

  def _recognition(self, x0, masked):
    informative = jnp.all(masked, -1, keepdims=True) & (self.k > 0)
    mean = jnp.where(informative, self.mu * (2.0 * x0[:, :1] - 1.0), 0.0)
    return mean, jnp.where(informative, self.log_var, 0.0)

  def __call__(self, x_t, t, z):
    del t
    visible = jnp.max(jnp.where(x_t == 2, -1, x_t), -1)  # the visible symbol, -1 if none
    copy = jnp.where(jnp.arange(3) == visible[:, None], 0.0, -30.0)
    from_z = self.k * z[:, :1] * jnp.array([-1.0, 1.0, 0.0]) + jnp.array([0.0, 0.0, -30.0])
    logits = jnp.where((visible >= 0)[:, None], copy, from_z)
    return jnp.broadcast_to(logits[:, None], x_t.shape + (3,))


def vae_config(method, **vae):
  config = toy_configs.get_config(f"{method},copy,tiny")
  config.data.update(toy_vocab=2)
  config.vae.update(latent_dim=1, **vae)
  return config


def vae_batch():
  return jnp.asarray(np.tile([[0, 0], [1, 1]], (2048, 1)), jnp.int32)


def test_vadd_double_elbo_falls_below_the_nll_and_is_not_labelled_a_bound():
  method = build_method(vae_config("vadd"), 2)
  mean, se = mc_nelbo(method, ScriptedVae(k=6.0), vae_batch(), 4)
  assert mean < math.log(2) - SIGMAS * se, (mean, se)  # about 1/2 (log 2 + the Gaussian gap)
  assert method.quantities["nelbo"] == "objective"
  reported = summary.summarize({"nelbo": mean * 10, "sequences": 10, "tokens": 20}, method.quantities)
  assert not {"ppl_bound", "bits_per_token", "bits_per_char"} & set(reported)


def test_vmd_with_an_x_t_posterior_falls_below_the_nll_and_is_not_labelled_a_bound():
  method = build_method(vae_config("vmd"), 2)
  assert method.posterior_input == "x0_xt" and method.quantities["nelbo"] == "objective"
  mean, se = mc_nelbo(method, ScriptedVae(k=6.0), vae_batch(), 4)
  assert mean < math.log(2) - SIGMAS * se, (mean, se)  # about 1/3 (log 2 + the Gaussian gap)


@pytest.mark.parametrize("k", [0.0, 6.0])
def test_vmd_with_a_posterior_of_x0_is_a_bound(k):
  method = build_method(vae_config("vmd", vmd_posterior="x0"), 2)
  assert method.quantities["nelbo"] == "bound"
  mean, se = mc_nelbo(method, ScriptedVae(k=k), vae_batch(), 4)
  assert_bound(mean, se, math.log(2), tight=k == 0)


# --- the one summary ---------------------------------------------------------------------

def test_summary_prints_perplexity_and_bits_only_for_bounds():
  totals = {"nelbo": 20.0, "nelbo_nstep_4": 30.0, "elbo_y": 5.0, "sequences": 10, "tokens": 40}
  kinds = {"nelbo": "objective", "nelbo_nstep_4": "bound"}
  out = summary.summarize(totals, kinds, chars_per_token=2.0)
  assert out["nelbo_per_token"] == 0.5 and out["elbo_y_per_sequence"] == 0.5
  assert "ppl_bound" not in out and "bits_per_token" not in out and "bits_per_char" not in out
  assert out["nelbo_nstep_4_ppl_bound"] == pytest.approx(math.exp(0.75))
  assert out["nelbo_nstep_4_bits_per_char"] == pytest.approx(0.75 / math.log(2) / 2)
  assert out["kinds"] == {"nelbo": "objective", "nelbo_nstep_4": "bound", "elbo_y": "diagnostic"}
  with pytest.raises(ValueError, match="unknown kind"):
    summary.summarize(totals, {"nelbo": "estimate"})


def test_summary_standard_error_is_the_spread_of_the_draws():
  """Three sequences, two draws each: the per-sequence NELBO is the mean of a sequence's
  draws, and its standard error is the draws' standard deviation over sqrt(6)."""
  draws = np.array([[3.0, 5.0], [4.0, 8.0], [1.0, 3.0]])
  totals = {"nelbo": draws.mean(axis=1).sum(), "sequences": 3, "tokens": 12, "draws": 6,
            "nelbo_squares": np.square(draws).sum()}
  out = summary.summarize(totals, {"nelbo": "bound"})
  assert out["nelbo_per_sequence"] == pytest.approx(draws.mean())
  assert out["nelbo_per_sequence_stderr"] == pytest.approx(draws.std() / math.sqrt(6))
  assert out["nelbo_per_token_stderr"] == pytest.approx(draws.std() / math.sqrt(6) / 4)
  assert "nelbo_per_sequence_stderr" not in summary.summarize(
      {k: totals[k] for k in ("nelbo", "sequences", "tokens")}, {"nelbo": "bound"})


def test_decoder_term_matches_its_monte_carlo_value():
  s = gaussian.GaussianSchedule("sqrt", eps=1e-2)
  t = 0.01
  y0 = jnp.full((200000, 1), 0.3)
  y_t = gaussian.noisy(s, y0, jax.random.normal(jax.random.key(0), y0.shape), t)
  var = s.sigma(t) ** 2 / s.alpha_sq(t)
  mc = jnp.mean(0.5 * jnp.log(2 * jnp.pi * var) + 0.5 * (y0 - y_t / s.alpha(t)) ** 2 / var)
  assert float(s.decoder_nll(t, 1)) == pytest.approx(float(mc), abs=0.01)
  assert float(s.decoder_nll(0.0, 1)) == pytest.approx(0.5 * math.log(2 * math.pi * math.e * 1e-2 / (1 - 1e-2)), rel=1e-5)


@pytest.mark.parametrize("latent", [dict(lead=1.0), dict(lead=-0.1), dict(lead=0.5, schedule="sequential")])
def test_a_bad_latent_lead_is_one_clear_error(latent):
  with pytest.raises(ValueError, match="latent.lead"):
    build_method(copy_config("di_ladd", **latent), V)
