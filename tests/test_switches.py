"""Config switches that no shipped config sets (python -m tools.unused_switches lists them),
each flipped and checked for its documented effect in ladd/config.py. Switches whose
meaning the bound tests decide (sigma0_mode, y_weighting, independent_times, time_shift,
vmd_posterior, importance_samples) are checked with those tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import ladd_binsaw, toys as toy_configs
from ladd import metrics
from ladd.config import default_config
from ladd.data import toys
from ladd.diffusion.sampling import SamplerSettings
from ladd.methods import build_method
from ladd.models.dit import DiT, DiTConfig
from ladd.models.latent import Quantizer
from ladd.trainer import make_optimizer
from tests.test_ladd_methods import binsaw_batch, eager_model, perturbed


def ladd_config(variant, **latent):
  config = ladd_binsaw.get_config(variant + "_tiny")
  config.latent.update(**latent)
  return config


def abstract_model(method):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: method.init_model(nnx.Rngs(0)))


def total_abs(tree):
  return sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(tree))


# --- stage 1 / stage 2 on Co-LADD sequential: one compiled gradient per stage ------------

# Stage 1 and stage 2 of the documented workflow; stage 1 also sets kl_weight. Both drop
# emb(t_y) (the sequential token denoiser always sees t_y = 0), so one model serves both.
STAGES = {"tokens": dict(stage="tokens", kl_weight=0.5, condition_ty=False),
          "latent": dict(stage="latent", freeze_encoder=True, condition_ty=False)}


@functools.cache
def perturbed_model():
  return perturbed(eager_model(build_method(ladd_config("co_seq", condition_ty=False), 2)))


@functools.cache
def stage_step(name):
  """One training-mode loss and gradient on a perturbed model (every parameter reaches
  the loss): (method, loss, metrics, gradients, model_state before and after)."""
  method = build_method(ladd_config("co_seq", **STAGES[name]), 2)
  graphdef, params, rest = nnx.split(perturbed_model(), nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  def loss(params):
    m = nnx.merge(graphdef, params, rest)
    value, step_metrics = method.loss(m, binsaw_batch(), jax.random.key(3), 0)
    return value, (step_metrics, nnx.to_pure_dict(nnx.state(m, nnx.Not(nnx.Param))))

  (value, (step_metrics, new_rest)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return method, float(value), step_metrics, grads, rest, new_rest


def test_stage_tokens_leaves_the_latent_denoiser_alone():
  *_, grads, _, _ = stage_step("tokens")
  assert total_abs(grads["latent_denoiser"]) == 0
  assert total_abs(grads["denoiser"]) > 0 and total_abs(grads["encoder"]) > 0


def test_stage_latent_with_a_frozen_encoder_trains_only_the_latent_denoiser():
  *_, grads, rest, new_rest = stage_step("latent")
  assert total_abs(grads["denoiser"]) == 0 and total_abs(grads["latent_denoiser"]) > 0
  # Unfrozen, L_y would reach the encoder through y_t = a y0 + s xi even in stage 2.
  assert total_abs(grads["encoder"]) == 0
  jax.tree.map(np.testing.assert_array_equal, new_rest["encoder"], rest["encoder"])  # statistics kept


def test_kl_weight_adds_half_lambda_squared_latent_norm():
  _, value, step_metrics, _, _, _ = stage_step("tokens")
  x0 = binsaw_batch()
  y0_sq = float(step_metrics["latent_norm"]) ** 2 * x0.shape[0] * 32  # y0 [B, S' = 1, d = 32]
  kl = 0.5 * STAGES["tokens"]["kl_weight"] * y0_sq / x0.size
  # stage "tokens": loss = (L_x + lambda/2 ||y0||^2) / tokens, with L_x the token NELBO
  assert value == pytest.approx(float(step_metrics["elbo_x_per_token"]) + kl, rel=1e-5)
  assert kl > 0.1 * value  # large enough that dropping it fails


def test_condition_ty_false_removes_the_latent_time_embedding():
  model = perturbed_model()
  assert model.denoiser.time_y is None
  assert abstract_model(build_method(ladd_config("co_seq"), 2)).denoiser.time_y is not None
  x0 = binsaw_batch(batch=2)
  y = jax.random.normal(jax.random.key(0), (2, 1, 32))
  apply = nnx.jit(lambda m, t_y: m.denoiser(x0, y, jnp.full((2,), 0.5), t_y))
  jax.tree.map(np.testing.assert_array_equal, apply(model, jnp.full((2,), 0.1)), apply(model, jnp.full((2,), 0.9)))


# --- the loss combination, schedules and samplers: no network --------------------------

@pytest.mark.parametrize("stage, expected", [("both", 2 * 3 + 3 * 7 + 0.5), ("tokens", 2 * 3 + 0.5),
                                             ("latent", 3 * 7 + 0.5)])
def test_loss_weights_and_stage_select_and_scale_the_channels(stage, expected):
  method = build_method(ladd_config("co_joint", w_x=2.0, w_y=3.0, stage=stage), 2)
  loss = method._combine(jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]), 0.5, 10)
  assert float(loss) == pytest.approx(expected / 10)


G_OF_T = {"sqrt": lambda t: np.sqrt(1 - t), "linear": lambda t: 1 - t,
          "cosine": lambda t: np.cos(np.pi / 2 * t) ** 2, "square": lambda t: 1 - t**2}


@pytest.mark.parametrize("kind", list(G_OF_T))
def test_gaussian_schedule_sets_the_latent_alpha(kind):
  method = build_method(ladd_config("co_joint", gaussian_schedule=kind), 2)
  t, eps = np.linspace(0.05, 0.95, 7), method.schedule.eps
  # alpha_bar^2 = (1 - 2 eps) g(t) + eps (ladd/diffusion/gaussian.py)
  np.testing.assert_allclose(method.latent_schedule.alpha(t) ** 2, (1 - 2 * eps) * G_OF_T[kind](t) + eps, rtol=1e-5)


@pytest.mark.parametrize("kind, keep", [("linear", lambda t: 1 - t), ("polynomial", lambda t: 1 - t**2)])
def test_code_schedule_sets_the_code_masking_rate(kind, keep):
  method = build_method(ladd_config("di_joint", code_schedule=kind), 2)
  t, eps = np.linspace(0.05, 0.95, 7), method.schedule.eps
  np.testing.assert_allclose(method.code_schedule.alpha(t), (1 - 2 * eps) * keep(t) + eps, rtol=1e-5)
  np.testing.assert_allclose(method.schedule.alpha(t), (1 - 2 * eps) * (1 - t) + eps, rtol=1e-5)  # tokens keep theirs


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_latent_sampler_ancestral_is_stochastic_and_ddim_is_not(sampler):
  method = build_method(ladd_config("co_joint"), 2)
  y = jax.random.normal(jax.random.key(0), (4, 1, 32))
  y0_hat = 0.5 * y
  settings = SamplerSettings(latent_sampler=sampler)
  step = lambda seed: np.asarray(method._latent_step(jax.random.key(seed), y, y0_hat, 0.6, 0.4, settings))
  assert np.allclose(step(1), step(2)) == (sampler == "ddim")


# --- network sizes, standardisation, codebook, optimiser, MFU, toy mixture ---------------

def test_latent_network_sizes_and_standardisation_follow_their_switches():
  method = build_method(ladd_config("co_seq", encoder_heads=4, denoiser_heads=1, standardize=False), 2)
  model = abstract_model(method)
  assert model.encoder.blocks[0].attn.n_heads == 4 and model.latent_denoiser.blocks[0].attn.n_heads == 1
  assert model.encoder.standardize is None
  assert abstract_model(build_method(ladd_config("co_seq"), 2)).encoder.standardize is not None


def test_mlp_ratio_sets_the_hidden_width():
  cfg = DiTConfig(vocab_size=3, seq_len=8, d_model=16, n_layers=1, n_heads=2, cond_dim=8, mlp_ratio=3, vocab_pad_multiple=8)
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: DiT(cfg, nnx.Rngs(0)))
  assert model.blocks[0].mlp.fc1.kernel.shape == (16, 48)


def test_codebook_decay_is_the_ema_rate():
  decay = 0.5
  method = build_method(ladd_config("di_joint", codebook_decay=decay), 2)
  quantizer = Quantizer(method.spec, nnx.Rngs(0), abstract_model(method).quantizer.decay)
  quantizer.counts[...] = jnp.ones(8)
  z_e = quantizer.codebook[jnp.zeros((4, 1), jnp.int32)]  # four vectors, all nearest to code 0
  quantizer(z_e, update=True)
  np.testing.assert_allclose(quantizer.counts[...], [decay + (1 - decay) * 4] + [decay] * 7, rtol=1e-6)


def test_commitment_weights_the_encoder_to_code_distance():
  beta = 2.0
  method = build_method(ladd_config("di_joint", commitment=beta), 2)
  x0 = binsaw_batch()

  @nnx.jit
  def extra_and_distance(m):
    terms = method._terms(m, x0, jax.random.key(0), training=False)
    z_e = m.encoder(x0)
    _, z_q = m.quantizer(z_e, update=False)
    return terms["extra"], jnp.sum(jnp.square(z_e - z_q))

  extra, distance = extra_and_distance(eager_model(method))
  # the per-sequence sum of beta ||z_e - sg(z_q)||^2 over the S' = 1 slot
  assert float(distance) > 0 and float(extra) == pytest.approx(beta * float(distance), rel=1e-5)


def test_optimiser_switches_clip_and_set_adam_moments_and_the_lr_floor():
  config = ladd_config("co_joint")
  config.optim.update(grad_clip=2.0, b1=0.5, b2=0.75, warmup_steps=2, lr=1.0, min_lr_ratio=0.25)
  tx, schedule = make_optimizer(config.optim, 10)
  params = {"w": jnp.zeros(4)}
  grads = {"w": jnp.full(4, 5.0)}  # norm 10, clipped to norm 2: each entry 1
  _, state = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(optax.tree_utils.tree_get(state, "mu")["w"], 0.5 * 1.0)
  np.testing.assert_allclose(optax.tree_utils.tree_get(state, "nu")["w"], 0.25 * 1.0)
  assert float(schedule(10)) == pytest.approx(0.25) and float(schedule(2)) == pytest.approx(1.0)


def test_peak_tflops_override_sets_mfu_peak():
  config = default_config()
  assert metrics.peak_flops_per_device(config.train.peak_tflops_per_device) is None  # a CPU has no tabulated peak
  config.train.peak_tflops_per_device = 123.0
  assert metrics.peak_flops_per_device(config.train.peak_tflops_per_device) == 123e12


def product_of_marginals(probs):
  axes = range(probs.ndim)
  marginals = [probs.sum(tuple(a for a in axes if a != i)) for i in axes]
  return functools.reduce(np.multiply.outer, marginals)


def test_mixture_components_and_seed_set_the_toy_joint():
  def joint(**overrides):
    cfg = toy_configs.get_config("mdlm,mixture,tiny").data
    cfg.update(**overrides)
    return toys.toy_task(cfg)[1].probs

  single = joint(mixture_components=1)  # one component: independent positions
  np.testing.assert_allclose(single, product_of_marginals(single), atol=1e-12)
  several = joint(mixture_components=4)
  assert np.abs(several - product_of_marginals(several)).max() > 1e-3
  np.testing.assert_array_equal(joint(mixture_seed=3), joint(mixture_seed=3))
  assert not np.allclose(joint(mixture_seed=3), joint(mixture_seed=4))
