"""Known-answer tests of the masked-diffusion mathematics (method.md §1)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ladd.diffusion import masking, sampling
from ladd.diffusion.schedules import Schedule

SCHEDULES = [Schedule("linear"), Schedule("cosine"), Schedule("polynomial", power=3.0)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.kind)
def test_schedule_is_clamped_and_derivative_matches_finite_differences(schedule):
  eps = schedule.eps
  assert float(schedule.alpha(0.0)) == pytest.approx(1 - eps, abs=1e-7)
  assert float(schedule.alpha(1.0)) == pytest.approx(eps, abs=1e-7)
  t = jnp.linspace(0.05, 0.95, 19, dtype=jnp.float64) if jax.config.jax_enable_x64 else jnp.linspace(0.05, 0.95, 19)
  h = 1e-3
  finite = (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h)
  np.testing.assert_allclose(schedule.alpha_derivative(t), finite, rtol=2e-3, atol=1e-4)
  assert np.all(np.diff(np.asarray(schedule.alpha(t))) < 0)


def test_linear_weight_is_closed_form():
  s = Schedule("linear")
  t = jnp.linspace(0.01, 1.0, 50)
  np.testing.assert_allclose(s.nelbo_weight(t), (1 - 2 * s.eps) / (1 - s.alpha(t)), rtol=1e-6)


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match="unknown schedule"):
    Schedule("sigmoid")


def test_stratified_times_cover_the_interval_evenly():
  t = np.sort(np.asarray(masking.stratified_times(jax.random.key(3), 64, 1e-4)))
  assert t.min() >= 1e-4 and t.max() <= 1.0
  np.testing.assert_allclose(np.diff(t), (1 - 1e-4) / 64, rtol=1e-4)


def test_mask_fraction_matches_alpha():
  x0 = jnp.zeros((4, 20000), jnp.int32)
  alpha = jnp.array([0.1, 0.5, 0.9, 1.0])
  x_t = masking.mask_tokens(jax.random.key(0), x0, alpha, mask_id=7)
  kept = np.asarray((x_t == 0).mean(axis=1))
  np.testing.assert_allclose(kept, alpha, atol=0.01)
  assert set(np.unique(np.asarray(x_t))) <= {0, 7}


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.kind)
def test_uniform_model_training_nelbo_misses_the_end_terms_and_the_bound_has_them(schedule):
  """Zero logits = uniform over V. The training NELBO (alpha masking, no end terms) has
  E = (alpha(eps) - alpha(1)) / (1 - eps) L log V < L log V; the bound is exactly L log V."""
  vocab, length, batch = 11, 64, 4096
  x0 = jax.random.randint(jax.random.key(1), (batch, length), 0, vocab)
  t = masking.stratified_times(jax.random.key(2), batch, schedule.eps)
  x_t = masking.mask_tokens(jax.random.key(3), x0, schedule.alpha(t), vocab)
  logits = jnp.zeros((batch, length, 16))
  nll = masking.masked_token_nll(logits, x0, x_t, vocab, vocab)
  nelbo = masking.nelbo_per_sequence(nll, t, schedule)
  expected = (schedule.alpha(schedule.eps) - schedule.alpha(1.0)) / (1 - schedule.eps) * length * np.log(vocab)
  assert float(nelbo.mean()) == pytest.approx(float(expected), rel=0.02)
  uniform = lambda x_t, t: masking.masked_token_nll(logits, x0, x_t, vocab, vocab)
  wide = dataclasses.replace(schedule, eps=0.05)  # the old estimator was 10% low here
  diffusion, fill = masking.masked_diffusion_bound(uniform, jax.random.key(4), x0, wide, vocab)
  bound = np.asarray(diffusion + fill, np.float64)
  assert abs(bound.mean() - length * np.log(vocab)) < 4 * bound.std() / np.sqrt(batch)
  assert float(masking.keep_probability(wide, 1.0)) == 0.0  # all-MASK at t = 1 is exact: no prior term


def test_subs_never_predicts_mask_and_carries_over_observed_tokens():
  vocab, mask = 5, 5
  logits = jax.random.normal(jax.random.key(0), (2, 6, 8))
  x_t = jnp.array([[0, mask, 3, mask, 4, mask], [mask] * 6])
  log_probs = masking.subs_log_probs(logits, x_t, vocab, mask)
  probs = np.exp(np.asarray(log_probs))
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert np.all(probs[..., vocab:] == 0)
  observed = np.asarray(x_t) != mask
  np.testing.assert_array_equal(probs[observed].argmax(-1), np.asarray(x_t)[observed])
  np.testing.assert_allclose(probs[observed].max(-1), 1.0)


def test_masked_nll_matches_log_softmax_and_ignores_unmasked_positions():
  vocab, mask = 5, 5
  logits = jax.random.normal(jax.random.key(4), (3, 7, 8))
  x0 = jax.random.randint(jax.random.key(5), (3, 7), 0, vocab)
  x_t = masking.mask_tokens(jax.random.key(6), x0, jnp.full((3,), 0.5), mask)
  nll = masking.masked_token_nll(logits, x0, x_t, vocab, mask)
  reference = -jnp.take_along_axis(jax.nn.log_softmax(logits[..., :vocab]), x0[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll, jnp.where(x_t == mask, reference, 0.0), rtol=1e-5, atol=1e-6)


def fixed_denoiser(probs, vocab_padded):
  """A denoiser with a fixed per-position distribution (SUBS applied)."""
  vocab = probs.shape[-1]
  logits = jnp.full(probs.shape[:-1] + (vocab_padded,), masking.NEG_INF).at[..., :vocab].set(jnp.log(probs))

  def denoise(x_t, t):
    del t
    return masking.subs_log_probs(jnp.broadcast_to(logits, x_t.shape + (vocab_padded,)), x_t, vocab, vocab)
  return denoise


@pytest.mark.parametrize("steps", [1, 3, 16])
def test_sampler_reproduces_a_known_factorised_distribution(steps):
  probs = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
  settings = sampling.SamplerSettings(steps=steps, cache=False)
  x, nfe = sampling.ancestral_sample(fixed_denoiser(probs, 8), jax.random.key(0), (20000, 2),
                                     Schedule("linear"), settings, mask_id=3, time_conditioned=False)
  x = np.asarray(x)
  assert int(nfe) == steps + 1
  for pos in range(2):
    freq = np.bincount(x[:, pos], minlength=4) / len(x)
    np.testing.assert_allclose(freq[:3], probs[pos], atol=0.015)
    assert freq[3] == 0


def test_sampler_never_changes_unmasked_tokens_and_is_seeded():
  schedule = Schedule("linear")
  denoise = fixed_denoiser(jnp.full((1, 4), 0.25), 8)
  settings = sampling.SamplerSettings(steps=8, cache=False)
  run = jax.jit(lambda key: sampling.ancestral_sample(denoise, key, (64, 12), schedule, settings, 4, False)[0])
  np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
  assert not np.array_equal(run(jax.random.key(1)), run(jax.random.key(2)))

  key = jax.random.key(1)
  x = jnp.full((64, 12), 4, jnp.int32)
  grid = sampling.time_grid(8, schedule.eps)
  for i in range(8):
    key, sub = jax.random.split(key)
    new = sampling.unmask_step(sub, x, denoise(x, grid[i]), schedule.alpha(grid[i]), schedule.alpha(grid[i + 1]), 4)
    was_unmasked = np.asarray(x) != 4
    np.testing.assert_array_equal(np.asarray(new)[was_unmasked], np.asarray(x)[was_unmasked])
    x = new


def test_cache_skips_calls_only_when_nothing_changed():
  """With 512 steps on length 4 most steps unmask nothing, so most calls are reused."""
  denoise = fixed_denoiser(jnp.full((1, 3), 1 / 3), 8)
  schedule = Schedule("linear")
  cached = sampling.SamplerSettings(steps=512, cache=True)
  x, nfe = sampling.ancestral_sample(denoise, jax.random.key(0), (1, 4), schedule, cached, 3, False)
  assert 1 <= int(nfe) <= 5 + 1
  _, nfe_timed = sampling.ancestral_sample(denoise, jax.random.key(0), (1, 4), schedule, cached, 3, True)
  assert int(nfe_timed) == 513
  uncached = sampling.SamplerSettings(steps=512, cache=False)
  x_uncached, _ = sampling.ancestral_sample(denoise, jax.random.key(0), (1, 4), schedule, uncached, 3, False)
  np.testing.assert_array_equal(x, x_uncached)  # reuse returns exactly what a call would


def test_argmax_fill_and_bad_settings():
  x_t = jnp.array([[3, 0, 3]])
  log_probs = fixed_denoiser(jnp.array([[0.1, 0.6, 0.3]]), 4)(x_t, 0.0)
  filled = sampling.fill_masks(jax.random.key(0), x_t, log_probs, 3, "argmax")
  np.testing.assert_array_equal(filled, [[1, 0, 1]])
  for bad in (dict(steps=0), dict(final_fill="greedy"), dict(temperature=0.0)):
    with pytest.raises(ValueError):
      sampling.SamplerSettings(**bad)
