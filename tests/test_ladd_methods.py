"""LADD methods (method.md §2): configs, losses and their regularisers on tiny models, and
one train -> sample -> evaluate run through the entry-point functions per combination."""

import functools
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from configs import ladd_binsaw, ladd_shakespeare
from ladd.diffusion.sampling import SamplerSettings
from ladd.evaluation import evaluate
from ladd.generate import sample
from ladd.job import load_trained
from ladd.methods import build_method
from ladd.nstep_bound import evaluate_nstep_bounds
from ladd.train_loop import train
from ladd.trainer import make_optimizer
from tests.helpers import ROOT, entry_point, snapshot, subprocess_env

VARIANTS = ("co_joint", "co_seq", "di_joint", "di_seq")


def eager_model(method, seed=0):
  """Initialised in one compiled call: op-by-op initialisation is slow on CPU."""
  with nnx.use_eager_sharding(False):
    return nnx.jit(lambda: method.init_model(nnx.Rngs(seed)))()


def perturbed(model, scale=0.2):
  """adaLN-zero makes a fresh network ignore its inputs; random weights everywhere do not."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  flat, unravel = ravel_pytree(params)  # one draw for all leaves: per-leaf draws are slow on CPU
  noisy = jax.jit(lambda flat: flat + scale * jax.random.normal(jax.random.key(9), flat.shape))(flat)
  return nnx.merge(graphdef, unravel(noisy), rest)


def binsaw_batch(batch=8, length=32, seed=0):
  """Correlated bits (one random phase per row), so a latent has something to carry."""
  rng = np.random.default_rng(seed)
  phase = rng.integers(0, length, (batch, 1))
  return jnp.asarray(((np.arange(length)[None] + phase) % 8 < 4).astype(np.int32))


@pytest.mark.parametrize("module", [ladd_binsaw, ladd_shakespeare], ids=["binsaw", "shakespeare"])
@pytest.mark.parametrize("variant", [v + s for v in VARIANTS for s in ("", "_tiny")])
def test_every_variant_loads_and_builds(module, variant):
  config = module.get_config(variant)
  vocab = 2 if module is ladd_binsaw else 65
  method = build_method(config, vocab)
  expected = ("co_ladd" if variant.startswith("co") else "di_ladd",
              "sequential" if "_seq" in variant else "joint")
  assert (method.name, method.describe()["latent_schedule"]) == expected
  if variant.endswith("_tiny"):
    with nnx.use_eager_sharding(False):
      shapes = nnx.eval_shape(lambda: method.init_model(nnx.Rngs(0)))
    assert (shapes.latent_denoiser is not None) == (expected == ("co_ladd", "sequential"))
    assert (shapes.quantizer is not None) == (expected[0] == "di_ladd")
    # The token stream has absolute positions (model.position_embedding), off: none at all.
    assert shapes.denoiser.positions.embedding.shape == (config.data.seq_len, config.model.d_model)
    config.model.position_embedding = "none"
    with nnx.use_eager_sharding(False):
      assert nnx.eval_shape(lambda: build_method(config, vocab).init_model(nnx.Rngs(0))).denoiser.positions is None


def test_unknown_variant_and_bad_latent_settings_are_rejected():
  with pytest.raises(ValueError, match="unknown variant"):
    ladd_binsaw.get_config("co_sideways")
  config = ladd_binsaw.get_config("co_joint_tiny")
  config.latent.schedule = "parallel"
  with pytest.raises(ValueError, match="latent.schedule"):
    build_method(config, 2)


@pytest.fixture(scope="module")
def co_method():
  config = ladd_binsaw.get_config("co_joint_tiny")
  config.latent.update(dropout=0.5, corruption_max=0.9)
  return build_method(config, 2)


def test_latent_dropout_only_drops_latent_losses_of_training_examples(co_method):
  model = eager_model(co_method)
  x0 = binsaw_batch(batch=64)
  # nnx.jit: training updates the encoder's standardisation statistics in place
  terms = nnx.jit(lambda m, training: co_method._terms(m, x0, jax.random.key(0), training), static_argnums=1)
  terms = functools.partial(terms, model)
  train_terms = terms(True)
  dropped = np.asarray(train_terms["loss_y"]) == 0
  assert 0.3 < dropped.mean() < 0.7  # p_tau = 0.5 of the examples
  kept_token_loss = np.asarray(train_terms["loss_x"])[dropped] > 0  # zero only if nothing was masked
  assert kept_token_loss.mean() > 0.8
  eval_terms = terms(False)
  assert not np.any(np.asarray(eval_terms["loss_y"]) == 0)  # no dropout in the reported bound


def test_encoder_corruption_hits_only_masked_positions(co_method):
  x_t = jnp.where(jax.random.uniform(jax.random.key(1), (256, 32)) < 0.5, 2, 0)  # MASK = 2
  corrupt = np.asarray(co_method._corruption(jax.random.key(2), x_t))
  assert not corrupt[np.asarray(x_t) != 2].any()
  assert 0.3 < corrupt.sum() / (np.asarray(x_t) == 2).sum() < 0.6  # E[p_r] = 0.45


def test_corrupted_positions_do_not_reach_the_encoder(co_method):
  encoder = jax.jit(perturbed(eager_model(co_method)).encoder)
  x0 = binsaw_batch()
  corrupt = jnp.zeros_like(x0, bool).at[:, :5].set(True)
  z = encoder(x0, corrupt)
  assert np.allclose(z, encoder(x0.at[:, :5].set(1 - x0[:, :5]), corrupt), atol=1e-5)
  assert not np.allclose(z, encoder(x0.at[:, 5:9].set(1 - x0[:, 5:9]), corrupt), atol=1e-3)


def test_encoder_standardises_in_training_and_is_per_sequence_at_evaluation(co_method):
  model = perturbed(eager_model(co_method))
  x0 = binsaw_batch(batch=64)
  z = np.asarray(nnx.jit(lambda m: m.encoder(x0, update_statistics=True))(model))
  np.testing.assert_allclose(z.mean((0, 1)), 0.0, atol=1e-4)
  np.testing.assert_allclose(z.var((0, 1)), 1.0, rtol=1e-2)  # var / (var + 1e-5)
  assert np.abs(model.encoder.standardize.mean[...]).sum() > 0  # running statistics absorbed the batch
  encode = jax.jit(lambda x: model.encoder(x))
  np.testing.assert_allclose(encode(x0)[:5], encode(x0[:5]), atol=1e-5)  # no batch coupling


def test_latent_information_is_zero_for_a_latent_the_network_ignores(co_method):
  x0 = binsaw_batch(batch=16)
  information = lambda m: np.asarray(jax.jit(lambda: co_method.nelbo(m, x0, jax.random.key(0)))()["latent_information"])
  np.testing.assert_array_equal(information(eager_model(co_method)), 0.0)  # adaLN-zero: logits ignore y
  model = perturbed(eager_model(co_method))
  assert np.abs(information(model)).max() > 1e-3
  empty = co_method._empty_latent_input(model, 16)
  np.testing.assert_allclose(jax.jit(lambda: co_method._latent_information(model, x0, empty))(), 0.0, atol=1e-4)


def test_encoder_learning_rate_scale_reaches_only_the_encoder():
  config = ladd_binsaw.get_config("co_joint_tiny")
  config.latent.encoder_lr_scale = 0.25
  method = build_method(config, 2)
  tx, _ = make_optimizer(config.optim, 10, method.lr_scales)
  params = {"encoder": {"w": jnp.ones(3)}, "denoiser": {"w": jnp.ones(3)}}
  grads = jax.tree.map(lambda p: 0.5 * p, params)
  _, opt_state = tx.update(grads, tx.init(params), params)  # step 0 of the warm-up has lr 0
  updates, _ = tx.update(grads, opt_state, params)
  np.testing.assert_allclose(updates["encoder"]["w"], 0.25 * updates["denoiser"]["w"], rtol=1e-6)
  assert np.all(np.asarray(updates["denoiser"]["w"]) != 0)


def test_straight_through_gives_the_encoder_a_gradient_and_ema_updates_the_codebook():
  method = build_method(ladd_binsaw.get_config("di_joint_tiny"), 2)
  model = eager_model(method)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)  # as the trainer carries them
  x0 = binsaw_batch()

  def loss(params):
    m = nnx.merge(graphdef, params, rest)
    value, _ = method.loss(m, x0, jax.random.key(3), 0)
    return value, nnx.to_pure_dict(nnx.state(m, nnx.Not(nnx.Param)))

  grads, new_rest = jax.jit(jax.grad(loss, has_aux=True))(params)  # jitted, as in the trainer
  encoder_grads = jax.tree.leaves(grads["encoder"])
  assert sum(float(jnp.abs(g).sum()) for g in encoder_grads) > 0
  assert not np.allclose(new_rest["quantizer"]["sums"], rest["quantizer"]["sums"])
  # the reported bound leaves the codebook alone
  m = nnx.merge(graphdef, params, rest)
  before = np.asarray(m.quantizer.sums[...])
  method.nelbo(m, x0, jax.random.key(4))
  np.testing.assert_array_equal(m.quantizer.sums[...], before)


# One continuous and one discrete latent, one joint and one sequential schedule: together
# they run every network and sampler path (tests/test_ladd_samplers.py checks all four
# schedules' NFE and determinism with a scripted network).
@pytest.fixture(scope="module", params=["co_seq", "di_joint"])
def trained(request, tmp_path_factory):
  config = ladd_binsaw.get_config(request.param + "_tiny")
  config.train.update(steps=2, checkpoint_every=2, eval_every=2)
  workdir = str(tmp_path_factory.mktemp(request.param))
  train(config, workdir)
  job, step, params, model_state = load_trained(workdir)
  return job, params, model_state, workdir


def test_end_to_end_train_sample_evaluate(trained):
  job, params, model_state, _ = trained
  result = evaluate(job, params, model_state, num_batches=1, t_samples=1, seed=0)
  assert np.isfinite(result["nelbo_per_sequence"])
  assert result["nelbo_per_sequence"] == pytest.approx(result["elbo_x_per_sequence"] + result["elbo_y_per_sequence"], rel=1e-4)
  assert result["elbo_x_per_sequence"] > 0
  assert np.isfinite(result["latent_information_per_sequence"])
  # a deterministic continuous encoder makes the sum ELBO-style: no perplexity "bound" from it
  is_bound = job.method.quantities["nelbo"] == "bound"
  assert ("ppl_bound" in result) == ("bits_per_token" in result) == (job.method.name == "di_ladd") == is_bound
  assert result["kinds"]["nelbo"] == job.method.quantities["nelbo"]
  assert job.method.has_nstep_bound == (job.method.name == "di_ladd")  # co_seq's encoder is deterministic
  batches = list(job.dataset.eval_batches(0, 1, job.config.data.eval_batch_size, 1))
  if job.method.has_nstep_bound:  # the real networks on the N-step path: nearly fresh, so ~L log 2 + log K
    totals = evaluate_nstep_bounds(job.trainer, job.method, params, model_state, batches, 0, [1])[1]
    per_sequence = {k: v / totals["sequences"] for k, v in totals.items() if k not in ("sequences", "tokens")}
    assert 0.5 < per_sequence["elbo_x"] / (job.config.data.seq_len * np.log(2)) < 1.5
    assert per_sequence["nelbo"] == pytest.approx(per_sequence["elbo_x"] + per_sequence["elbo_y"], rel=1e-5)
  else:
    with pytest.raises(ValueError, match="no N-step bound"):
      evaluate_nstep_bounds(job.trainer, job.method, params, model_state, batches, 0, [1])
  assert "bound" in job.method.describe()
  tokens, nfe = sample(job, params, model_state, SamplerSettings(steps=2, latent_steps=2, cache=False), 4, 4, seed=0)
  assert tokens.shape == (4, job.config.data.seq_len) and set(np.unique(tokens)) <= {0, 1}
  assert nfe == {("co_ladd", "joint"): 3, ("co_ladd", "sequential"): 5,
                 ("di_ladd", "joint"): 3, ("di_ladd", "sequential"): 6}[job.method.name, job.method.describe()["latent_schedule"]]
  assert np.isfinite(job.dataset.exact.log_prob(tokens)).all()


def test_sample_entry_point_records_both_step_counts(trained):
  job, _, _, workdir = trained
  result = subprocess.run(entry_point("ladd.sample", f"--workdir={workdir}", "--steps=2", "--latent_steps=3",
                                      "--num_samples=2", "--seed=4", "--quiet"),
                          cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  with open(os.path.join(workdir, "samples.jsonl")) as f:
    record = json.loads(f.readline())
  sequential = job.method.describe()["latent_schedule"] == "sequential"
  assert (record["method"], record["N_x"], record["N_y"]) == (job.method.name, 2, 3 if sequential else 2)
  assert record["nfe"] == {("co_ladd", True): 6, ("di_ladd", False): 3}[job.method.name, sequential]
  assert (record["seed"], record["temperature"], record["dtype"]) == (4, 1.0, job.config.model.dtype)
  assert record["latent_schedule"] == job.config.latent.schedule and record["bound"] == job.method.bound_statement


# A switch per fixture run that changes parameter shapes only: the latent's width, or the
# time embedding of the token time (its MLP exists only with time conditioning).
SHAPE_CHANGES = {
    "co_seq": (["--config.latent.dim=8"], "ema/params/denoiser/latent_head/proj/bias: checkpoint float32[32] vs config float32[8]"),
    "di_joint": (["--config.model.time_conditioning=True"], "ema/params/denoiser/time_x/fc1/bias float32[16] not in the checkpoint"),
}


def test_resume_with_other_parameter_shapes_is_one_line_naming_them(trained):
  job, _, _, workdir = trained
  variant = job.method.name.split("_")[0] + ("_seq" if job.config.latent.schedule == "sequential" else "_joint")
  changed, expected = SHAPE_CHANGES[variant]
  before = snapshot(workdir)
  result = subprocess.run(entry_point(
      "ladd.train", f"--config=configs/ladd_binsaw.py:{variant}_tiny", f"--workdir={workdir}",
      "--config.train.steps=2", "--config.train.checkpoint_every=2", "--config.train.eval_every=2", *changed),
      cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=300)
  errors = [line for line in result.stderr.splitlines() if "error" in line]
  assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
  assert errors[0].startswith("ladd.train: error: checkpoint step 2 in ") and "incompatible with the config" in errors[0]
  assert expected in errors[0], errors[0]
  assert "Traceback" not in result.stderr and snapshot(workdir) == before
