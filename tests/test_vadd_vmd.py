"""VADD and VMD (method.md §3-4): Gaussian-latent mathematics, the reduction of the double
ELBO to the MDLM NELBO, seeded samplers and a tiny train + sample + evaluate run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import toys as toy_configs
from ladd import sharding
from ladd.diffusion import gaussian_latent, masking
from ladd.diffusion.sampling import SamplerSettings
from ladd.evaluation import evaluate, exact_sample_metrics
from ladd.methods import build_method
from ladd.methods.vmd import argmax_log_probs
from ladd.trainer import build_trainer
from tests.helpers import assert_one_step_marginals_match_the_product, one_device_job


def test_diagonal_gaussian_kl_matches_closed_form_and_monte_carlo():
  mean_q, log_var_q = jnp.array([0.3, -1.0]), jnp.log(jnp.array([0.5, 2.0]))
  mean_p, log_var_p = jnp.array([0.0, 0.5]), jnp.log(jnp.array([1.0, 3.0]))
  kl = gaussian_latent.diagonal_gaussian_kl(mean_q, log_var_q, mean_p, log_var_p)
  # KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2
  by_hand = [0.5 * math.log(1 / 0.5) + (0.5 + 0.09) / 2 - 0.5,
             0.5 * math.log(3 / 2) + (2.0 + 2.25) / 6 - 0.5]
  np.testing.assert_allclose(kl, by_hand, rtol=1e-6)
  z = gaussian_latent.reparameterize(jax.random.key(0), jnp.broadcast_to(mean_q, (400_000, 2)),
                                     jnp.broadcast_to(log_var_q, (400_000, 2)))
  monte_carlo = jnp.mean(gaussian_latent.diagonal_gaussian_log_prob(z, mean_q, log_var_q)
                         - gaussian_latent.diagonal_gaussian_log_prob(z, mean_p, log_var_p))
  assert float(monte_carlo) == pytest.approx(sum(by_hand), abs=0.01)
  np.testing.assert_allclose(gaussian_latent.kl_to_standard_normal(mean_q, log_var_q),
                             gaussian_latent.diagonal_gaussian_kl(mean_q, log_var_q, 0.0, 0.0), rtol=1e-6)
  assert float(gaussian_latent.kl_to_standard_normal(jnp.zeros(3), jnp.zeros(3)).sum()) == 0.0


def test_kl_annealing_rises_linearly_from_zero_to_one():
  weights = [float(gaussian_latent.kl_anneal_weight(step, 100)) for step in (0, 25, 50, 100, 1000)]
  assert weights == [0.0, 0.25, 0.5, 1.0, 1.0]
  assert float(gaussian_latent.kl_anneal_weight(0, 0)) == 1.0


def tiny_config(method, **vae):
  config = toy_configs.get_config(f"{method},copy,tiny")
  config.data.update(toy_vocab=5)
  config.vae.update(**vae)
  config.mesh.update(data=1)
  return config


def jitted_nelbo(method, graphdef, mesh):
  return sharding.on_mesh(mesh, jax.jit(
      lambda params, x0, key: method.nelbo(nnx.merge(graphdef, params, {}), x0, key)))


@pytest.fixture(scope="module")
def prior_and_blind_decoder():
  """A VADD model whose recognition model is the prior and whose denoiser ignores z (the
  z-MLP's output layer is zero), with a non-trivial denoiser head; and MDLM on that DiT."""
  config = tiny_config("vadd", importance_samples=4, kl_anneal_steps=10)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  vadd = build_method(config, 5)
  trainer = build_trainer(config, vadd, mesh)
  params = jax.device_get(trainer.init()["params"])
  fc2 = params["latent_conditioning"]["fc2"]
  fc2["kernel"], fc2["bias"] = np.zeros_like(fc2["kernel"]), np.zeros_like(fc2["bias"])
  head = params["denoiser"]["head"]["proj"]
  head["kernel"] = np.random.default_rng(0).normal(0, 1.0, head["kernel"].shape).astype(np.float32)
  config.method = "mdlm"
  mdlm = build_method(config, 5)
  mdlm_trainer = build_trainer(config, mdlm, mesh)
  x0 = jnp.asarray(np.random.default_rng(1).integers(0, 5, (16, 2)), jnp.int32)
  return vadd, trainer, params, mdlm, mdlm_trainer, mesh, x0, jitted_nelbo(vadd, trainer.graphdef, mesh)


def test_double_elbo_with_prior_recognition_and_blind_decoder_is_the_mdlm_nelbo(prior_and_blind_decoder):
  vadd, trainer, params, mdlm, mdlm_trainer, mesh, x0, vadd_nelbo = prior_and_blind_decoder
  key = jax.random.key(7)
  ours = vadd_nelbo(params, x0, key)
  # the double ELBO is the objective built on MDLM's training NELBO (alpha(t) masking, no end terms)
  def mdlm_training_nelbo(denoiser_params):
    nll, _, t = mdlm._token_nll(nnx.merge(mdlm_trainer.graphdef, denoiser_params, {}), x0, key)
    return masking.nelbo_per_sequence(nll, t, mdlm.schedule)

  reference = sharding.on_mesh(mesh, jax.jit(mdlm_training_nelbo))(params["denoiser"])
  assert float(jnp.abs(reference).max()) > 1.0  # a non-trivial bound, not all zeros
  # importance_samples=4: with r = p(z) and p(x0 | x_t, z) free of z every weight is equal.
  np.testing.assert_allclose(ours["nelbo"], reference, rtol=1e-5, atol=1e-4)  # logsumexp rounding
  np.testing.assert_allclose(ours["recon"], reference, rtol=1e-5)
  np.testing.assert_array_equal(ours["kl"], 0.0)
  loss_fn = sharding.on_mesh(mesh, jax.jit(lambda params, step: vadd.loss(
      nnx.merge(trainer.graphdef, params, {}), x0, key, step)))
  loss, metrics = loss_fn(params, 10)
  assert float(metrics["kl_weight"]) == 1.0
  assert float(loss) == pytest.approx(float(reference.sum()) / x0.size, rel=1e-5)


def test_vadd_kl_is_paid_at_every_t_and_vmd_once(prior_and_blind_decoder):
  vadd, trainer, params, _, _, mesh, x0, vadd_nelbo = prior_and_blind_decoder
  params = jax.tree.map(np.copy, params)
  rec_head = params["recognition"]["head"]
  rec_head["bias"] = np.full_like(rec_head["bias"], 0.5)  # mean 0.5, log-variance 0.5 per dim
  kl_per_dim = float(gaussian_latent.kl_to_standard_normal(jnp.float32(0.5), jnp.float32(0.5)))
  key = jax.random.key(3)
  terms = vadd_nelbo(params, x0, key)  # plain-bound terms even with importance samples
  t = masking.stratified_times(jax.random.split(key)[0], x0.shape[0], vadd.schedule.eps)  # MDLM's t
  weight = vadd.schedule.nelbo_weight(t)
  np.testing.assert_allclose(terms["kl"], weight * vadd.latent_dim * kl_per_dim, rtol=1e-4)
  vmd = build_method(tiny_config("vmd"), 5)
  vmd_terms = jitted_nelbo(vmd, trainer.graphdef, mesh)(params, x0, key)
  np.testing.assert_allclose(vmd_terms["kl"], vadd.latent_dim * kl_per_dim, rtol=1e-5)
  np.testing.assert_allclose(vmd_terms["nelbo"], vmd_terms["recon"] + vmd_terms["kl"], rtol=1e-6)


def test_recognition_model_sees_the_mask(prior_and_blind_decoder):
  _, trainer, params, _, _, mesh, x0, _ = prior_and_blind_decoder
  params = jax.tree.map(np.copy, params)
  rec_head = params["recognition"]["head"]
  rec_head["kernel"] = np.random.default_rng(2).normal(0, 1, rec_head["kernel"].shape).astype(np.float32)
  posterior_mean = sharding.on_mesh(mesh, jax.jit(
      lambda masked: nnx.merge(trainer.graphdef, params, {}).recognition(x0, masked)[0]))
  visible = posterior_mean(jnp.zeros(x0.shape, bool))
  masked = posterior_mean(jnp.ones(x0.shape, bool).at[:, 0].set(False))
  assert float(jnp.abs(visible - masked).max()) > 1e-3


@pytest.fixture(scope="module", params=["vadd", "vmd"])
def trained(request):
  """A few real train steps on the tiny checkerboard, on one device (the sharded trainer
  itself is tested in test_training.py; one device keeps compilation short)."""
  config = toy_configs.get_config(f"{request.param},checkerboard,tiny")
  job = one_device_job(config)
  state = job.trainer.init()
  batches = job.dataset.train_iterator(0, 1, config.data.batch_size)
  for _ in range(config.train.steps):
    state, metrics = job.trainer.train_step(state, sharding.global_batch(next(batches), job.mesh))
  assert np.isfinite(float(metrics["loss"]))
  return request.param, job, state["ema"], state["model_state"]


def test_tiny_train_sample_evaluate(trained):
  name, job, params, model_state = trained
  result = evaluate(job, params, model_state, 1, 1, 0)
  assert {"nelbo_per_token", "recon_per_token", "kl_per_token"} <= set(result)
  assert result["nelbo_per_token"] == pytest.approx(result["recon_per_token"] + result["kl_per_token"], rel=1e-5)
  # A nearly fresh model predicts nearly uniform logits over B = 16 bins: NELBO ~ log 16.
  assert 0.5 * math.log(16) < result["nelbo_per_token"] < 1.5 * math.log(16)
  metrics, distributions = exact_sample_metrics(job, params, model_state, [1], 0)
  assert set(metrics) == {1} and 0 <= metrics[1]["js"] <= math.log(2)
  assert metrics[1]["nfe"] == 2 if name == "vadd" else metrics[1]["nfe"] <= 2
  np.testing.assert_allclose(distributions[1].sum(), 1.0)


def test_samplers_are_deterministic_under_a_seed(trained):
  name, job, params, model_state = trained
  draw = sharding.on_mesh(job.mesh, jax.jit(lambda key: job.method.sample(
      nnx.merge(job.trainer.graphdef, params, model_state), key, 64, SamplerSettings(steps=4))))
  first, info = draw(jax.random.key(1))
  np.testing.assert_array_equal(first, draw(jax.random.key(1))[0])
  assert not np.array_equal(first, draw(jax.random.key(2))[0])
  assert first.shape == (64, 2) and int(first.min()) >= 0 and int(first.max()) < 16
  assert int(info["nfe"]) == 5 if name == "vadd" else int(info["nfe"]) <= 5


@pytest.mark.parametrize("method", ["vadd", "vmd"])
def test_one_step_samples_give_every_position_its_own_marginal(method):
  """The z of VADD / VMD is one vector for the whole sequence: position must come from the
  token stream's position embedding (the arithmetic is in the helper)."""
  assert_one_step_marginals_match_the_product(method)


def test_argmax_decoding_puts_all_mass_on_the_best_symbol():
  log_probs = jnp.log(jnp.array([[0.2, 0.5, 0.3, 0.0]]))
  np.testing.assert_allclose(jnp.exp(argmax_log_probs(log_probs)), [[0, 1, 0, 0]])


def test_bad_vae_settings_are_rejected():
  with pytest.raises(ValueError, match="latent_dim"):
    build_method(tiny_config("vadd", latent_dim=0), 5)
  with pytest.raises(ValueError, match="importance"):
    build_method(tiny_config("vmd", importance_samples=2), 5)
  with pytest.raises(ValueError, match="vmd_decoding"):
    build_method(tiny_config("vmd", vmd_decoding="beam"), 5)
