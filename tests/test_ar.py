"""The autoregressive method: causal, exact perplexity, uniform when fresh, padding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ladd.diffusion.sampling import FREE, SamplerSettings
from ladd.evaluation import evaluate
from ladd.generate import draw_samples, sample
from ladd.job import build_job
from ladd.models.dit import DiT, DiTConfig
from tests.helpers import tiny_config

VOCAB, SEQ_LEN = 11, 16


def ar_config(path, pad=False):
  c = tiny_config()
  c.method = "ar"
  c.data.update(source="npy", path=str(path), vocab_size=VOCAB, seq_len=SEQ_LEN,
                batch_size=8, eval_batch_size=8)
  c.model.update(d_model=32, n_heads=2, n_layers=1, cond_dim=16)
  return c


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  path = tmp_path_factory.mktemp("ar") / "ids.npy"
  ids = np.random.default_rng(0).integers(0, VOCAB, (400, SEQ_LEN), dtype=np.int32)
  np.save(path, ids)
  return build_job(ar_config(path), None)


def perturbed(params, scale=0.5):
  """A fresh model predicts uniformly (zero head); noise makes every position depend on its context."""
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape).astype(np.float32), params)


@pytest.fixture(scope="module")
def network(job):
  """(perturbed params, model_state, jitted raw network: inputs [B, L] -> logits [B, L, V])."""
  state = job.trainer.init()
  params, model_state = perturbed(jax.device_get(state["params"])), state["model_state"]

  @jax.jit
  def forward(inputs):
    model = nnx.merge(job.trainer.graphdef, params, model_state)
    return model(inputs, np.zeros(len(inputs), np.float32))[..., :VOCAB]
  return params, model_state, forward


def reference_nll(forward, x0):
  """Mean -log p(x_i | x_<i) in numpy from the raw network fed BOS (id V) then x0[:-1]."""
  inputs = np.concatenate([np.full((len(x0), 1), VOCAB), x0[:, :-1]], axis=1).astype(np.int32)
  logits = np.asarray(forward(inputs), np.float64)
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, x0[..., None], -1).mean()


def test_fresh_ar_model_has_perplexity_v(job):
  state = job.trainer.init()
  result = evaluate(job, state["params"], state["model_state"], 0, 1, 0)
  np.testing.assert_allclose(result["ppl"], VOCAB, rtol=1e-5)
  assert "ppl_bound" not in result and result["estimator"]["kind"].startswith("exact")


def test_evaluated_perplexity_is_exp_of_mean_token_nll(job, network):
  params, model_state, forward = network
  result = evaluate(job, params, model_state, 0, 1, 0)
  held_out = np.stack([job.dataset.eval_examples[i] for i in range(result["estimator"]["sequences"])])
  expected = reference_nll(forward, held_out)
  assert abs(expected - np.log(VOCAB)) > 0.05  # not the uniform model
  np.testing.assert_allclose(np.log(result["ppl"]), expected, rtol=1e-4)
  assert result["estimator"]["tokens"] == held_out.size


def test_ar_network_is_causal(network):
  _, _, forward = network
  x = np.random.default_rng(2).integers(0, VOCAB, (8, SEQ_LEN), dtype=np.int32)
  changed = x.copy()
  changed[:, 9:] = (changed[:, 9:] + 1) % VOCAB
  a, b = np.asarray(forward(x)), np.asarray(forward(changed))
  np.testing.assert_allclose(a[:, :9], b[:, :9], atol=1e-6)  # output i reads inputs <= i only
  assert np.abs(a[:, 9] - b[:, 9]).max() > 1e-3


def test_ar_samples_left_to_right(job, network):
  params, model_state, _ = network
  tokens, nfe = sample(job, params, model_state, SamplerSettings(temperature=1.0), 8, 8, 0)
  assert tokens.shape == (8, SEQ_LEN) and nfe == SEQ_LEN
  assert tokens.min() >= 0 and tokens.max() < VOCAB


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decoding_from_the_kv_cache_gives_the_networks_logits(scan_layers):
  cfg = DiTConfig(vocab_size=VOCAB, seq_len=SEQ_LEN, d_model=32, n_heads=2, n_layers=2, cond_dim=16,
                  vocab_pad_multiple=8, causal=True, scan_layers=scan_layers)
  with nnx.use_eager_sharding(False):  # no mesh here; initialised in one compiled call
    graphdef, params, rest = nnx.split(nnx.jit(lambda: DiT(cfg, nnx.Rngs(0)))(), nnx.Param, ...)
  params = perturbed(params)
  x = jnp.asarray(np.random.default_rng(3).integers(0, VOCAB + 1, (4, SEQ_LEN), dtype=np.int32))

  @jax.jit
  def whole_and_stepwise(params):
    model = nnx.merge(graphdef, params, rest)

    def step(cache, i):
      logits, cache = model.decode(x[:, i], i, cache)
      return cache, logits
    _, logits = jax.lax.scan(step, model.init_cache(len(x)), jnp.arange(SEQ_LEN))
    return model(x, jnp.zeros(len(x))), logits.transpose(1, 0, 2)
  whole, stepwise = whole_and_stepwise(params)
  assert np.abs(np.asarray(whole)[:, 1:] - np.asarray(whole)[:, :1]).max() > 0.1  # positions differ
  np.testing.assert_allclose(stepwise, whole, rtol=1e-5, atol=2e-4)  # float32 rounding of logits ~30


def test_kv_cached_sampler_draws_the_tokens_of_the_uncached_one(job, network):
  params, model_state, _ = network
  prompt = np.full(SEQ_LEN, FREE, np.int32)
  prompt[:3], prompt[-1] = [4, 1, 7], 2  # a prompt and a last token, as ladd.sample --prompt/--suffix
  drawn = {}
  for name, settings, clamped in (("sampled", SamplerSettings(temperature=1.0), None),
                                  ("greedy", SamplerSettings(top_k=1), prompt)):
    for cache in (True, False):
      drawn[name, cache] = draw_samples(job, params, model_state, dataclasses.replace(settings, cache=cache),
                                        8, 8, 5, clamped)[0]
    np.testing.assert_array_equal(drawn[name, True], drawn[name, False])
  greedy = drawn["greedy", True]
  assert (greedy[:, :3] == [4, 1, 7]).all() and (greedy[:, -1] == 2).all()
  assert (greedy == greedy[0]).all()  # greedy: every row the same argmax continuation
  assert len({tuple(row) for row in drawn["sampled", True]}) > 1  # the key matters, not only the model
