"""The DiT backbone: logical names on every parameter of every method's networks, zero-initialised head,
time-conditioning and position-embedding switches, rematerialisation and bf16 compute."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ladd.methods import build_method
from ladd.models.dit import DiT, DiTConfig
from ladd.sharding import LOGICAL_RULES
from tests.helpers import NETWORKS, method_config

CFG = DiTConfig(vocab_size=11, seq_len=16, d_model=32, n_layers=2, n_heads=2, cond_dim=16, vocab_pad_multiple=8)


def build(cfg=CFG, seed=0):
  """Initialised in one compiled call: op-by-op initialisation is slow on CPU."""
  with nnx.use_eager_sharding(False):
    return nnx.jit(lambda: DiT(cfg, nnx.Rngs(seed)))()


@pytest.mark.parametrize("network", NETWORKS)
def test_every_parameter_has_known_logical_axis_names(network):
  """Every method's networks (DiT, LADD encoder / MM-DiT / g_psi, VAE recognition model)."""
  known = {name for name, _ in LOGICAL_RULES}
  with nnx.use_eager_sharding(False):
    method = build_method(method_config(network), 2)
    _, params, _ = nnx.split(nnx.eval_shape(lambda: method.init_model(nnx.Rngs(0))), nnx.Param, ...)
  leaves = jax.tree.leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert leaves
  for path, variable in leaves:
    names = variable.get_metadata().get("out_sharding")
    assert names is not None and len(names) == variable.get_value().ndim, jax.tree_util.keystr(path)
    assert set(names) <= known, jax.tree_util.keystr(path)


def test_fresh_model_predicts_uniform_logits_and_pads_vocab():
  model = build()
  x = jax.random.randint(jax.random.key(0), (3, 16), 0, 12)
  logits = nnx.jit(lambda m: m(x, jnp.full((3,), 0.5)))(model)
  assert logits.shape == (3, 16, 16)  # V + 1 = 12 rounded up to a multiple of 8
  np.testing.assert_array_equal(logits, 0.0)


@functools.cache
def perturbed_params():
  """Parameters whose zero-initialised parts are randomised, so outputs depend on inputs.
  Remat, dtype and time conditioning do not change parameter shapes: one set serves all."""

  @jax.jit
  def perturb(params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return perturb(nnx.split(build())[1])


def graphdef_of(cfg):
  with nnx.use_eager_sharding(False):
    return nnx.graphdef(nnx.eval_shape(lambda: DiT(cfg, nnx.Rngs(0))))


def perturbed(cfg):
  return nnx.merge(graphdef_of(cfg), perturbed_params())


def test_time_conditioning_switch():
  x = jnp.full((2, 16), 11)
  early, late = jnp.array([0.1, 0.1]), jnp.array([0.9, 0.9])
  apply = nnx.jit(lambda model, t: model(x, t))
  off = perturbed(CFG)
  np.testing.assert_array_equal(apply(off, early), apply(off, late))
  on = perturbed(dataclasses.replace(CFG, time_conditioning=True))
  assert not np.allclose(apply(on, early), apply(on, late))


def test_position_embedding_off_is_the_rope_only_dit_and_blind_to_position():
  """With the switch off the tree is the learned one less `positions`, every other initial
  value unchanged (the table is drawn last); an all-MASK input then gives every position the
  same logits (RoPE reweights identical values), with the table on they differ."""
  rope_only = dataclasses.replace(CFG, position_embedding="none")
  learned, none = (nnx.to_pure_dict(nnx.state(build(cfg), nnx.Param)) for cfg in (CFG, rope_only))
  table = learned.pop("positions")["embedding"]
  assert table.shape == (CFG.seq_len, CFG.d_model)
  shapes = lambda params: jax.tree.map(np.shape, params)
  assert shapes(learned) == shapes(none)
  jax.tree.map(np.testing.assert_array_equal, learned, none)

  all_mask = jnp.full((2, 16), CFG.mask_id)
  apply = nnx.jit(lambda model: model(all_mask, jnp.array([1.0, 1.0])))
  params = nnx.to_pure_dict(perturbed_params())
  with nnx.use_eager_sharding(False):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: DiT(rope_only, nnx.Rngs(0))))
  blind = apply(nnx.merge(graphdef, {k: v for k, v in params.items() if k != "positions"}))
  assert float(jnp.abs(blind).max()) > 0.1  # the perturbed head gives non-trivial logits
  # Equal up to float rounding: attention weights differ by position, values do not.
  np.testing.assert_allclose(blind, jnp.broadcast_to(blind[:, :1], blind.shape), rtol=1e-5, atol=1e-6)
  seeing = apply(perturbed(CFG))
  assert float(jnp.abs(seeing - seeing[:, :1]).max()) > 1e-2


def loss_and_grads(cfg, params=None):
  x = jax.random.randint(jax.random.key(2), (2, 16), 0, 12)
  t = jnp.array([0.3, 0.7])
  graphdef = graphdef_of(cfg)

  def loss(p):
    logits = nnx.merge(graphdef, p)(x, t)
    assert logits.dtype == cfg.compute_dtype
    return jnp.mean(logits.astype(jnp.float32) ** 2)
  return jax.jit(jax.value_and_grad(loss))(perturbed_params() if params is None else params)


@functools.cache
def reference_loss_and_grads():
  return loss_and_grads(CFG)


def stack_blocks(params):
  """Unrolled parameters {blocks: {0: .., 1: ..}} restacked as model.scan_layers holds them."""
  params = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
  blocks = params["blocks"]
  return dict(params, blocks=jax.tree.map(lambda *layers: jnp.stack(layers), *(blocks[i] for i in sorted(blocks))))


def test_remat_and_bf16_keep_the_function():
  loss, grads = reference_loss_and_grads()
  loss_remat, grads_remat = loss_and_grads(dataclasses.replace(CFG, remat="full"))
  assert float(loss_remat) == pytest.approx(float(loss), rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, grads_remat)
  loss_bf16, _ = loss_and_grads(dataclasses.replace(CFG, dtype="bfloat16"))
  assert float(loss_bf16) == pytest.approx(float(loss), rel=0.05)


def test_scanned_layers_match_the_unrolled_model():
  """The same parameters restacked: equal loss and gradients, under every remat policy."""
  loss, grads = reference_loss_and_grads()
  for remat in ("none", "dots_saveable"):
    scanned_cfg = dataclasses.replace(CFG, scan_layers=True, remat=remat)
    loss_scan, grads_scan = loss_and_grads(scanned_cfg, stack_blocks(perturbed_params()))
    assert float(loss_scan) == pytest.approx(float(loss), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 stack_blocks(grads), grads_scan)


def test_scanned_blocks_carry_a_layers_axis():
  with nnx.use_eager_sharding(False):
    _, params = nnx.split(nnx.eval_shape(lambda: DiT(dataclasses.replace(CFG, scan_layers=True), nnx.Rngs(0))), nnx.Param)
  kernel = params["blocks"]["mlp"]["fc1"]["kernel"]
  assert kernel.get_value().shape == (CFG.n_layers, CFG.d_model, 4 * CFG.d_model)
  assert kernel.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")


@pytest.mark.parametrize("bad", [dict(remat=True), dict(remat="some"), dict(d_model=30, n_heads=4), dict(d_model=36, n_heads=4), dict(dtype="fp8"),
                                 dict(attention_impl="flash"), dict(position_embedding="sinusoidal")])
def test_bad_model_config_is_rejected(bad):
  with pytest.raises(ValueError, match="model\\."):
    dataclasses.replace(CFG, **bad)


def test_checkpoint_records_from_before_remat_policies_still_load():
  from ladd.job import config_from_record
  assert config_from_record({"model": {"remat": True}, "vocab_size": 5}).model.remat == "full"
  assert config_from_record({"model": {"remat": False}}).model.remat == "none"
  assert config_from_record({"model": {"remat": "dots_saveable"}}).model.remat == "dots_saveable"



def test_scanned_ladd_joint_denoiser_matches_the_unrolled_one():
  from configs import ladd_shakespeare
  from ladd.methods import build_method

  def method(scan):
    config = ladd_shakespeare.get_config("co_seq_tiny")
    config.model.update(n_layers=2, scan_layers=scan)
    return build_method(config, 20)

  unrolled, scanned = method(False), method(True)
  with nnx.use_eager_sharding(False):
    graphdef, params, rest = nnx.split(nnx.jit(lambda: unrolled.init_model(nnx.Rngs(0)))(), nnx.Param, ...)
    scanned_graphdef = nnx.graphdef(nnx.eval_shape(lambda: scanned.init_model(nnx.Rngs(0))))
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape), nnx.to_pure_dict(params))
  rest = nnx.to_pure_dict(rest)  # encoder statistics: the joint denoiser's blocks hold only parameters
  x0 = jax.random.randint(jax.random.key(3), (4, 32), 0, 20)

  def loss_and_grads(method, graphdef, params):
    loss = lambda p: method.loss(nnx.merge(graphdef, p, rest), x0, jax.random.key(1), 0)[0]  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))(params)

  def stack_denoiser(tree):
    return dict(tree, denoiser=stack_blocks(tree["denoiser"]))

  loss, grads = loss_and_grads(unrolled, graphdef, params)
  loss_scan, grads_scan = loss_and_grads(scanned, scanned_graphdef, stack_denoiser(params))
  assert float(loss_scan) == pytest.approx(float(loss), rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stack_denoiser(grads), grads_scan)
