"""Toy sources with an exact joint (method.md §5) and the exact metrics on them."""

import functools
import math

import numpy as np
import pytest

from configs import toys as toy_configs
from ladd import exact_metrics
from ladd.data import DataError, build_dataset, toys
from ladd.data.binsaw import BinsawDensity
from ladd.data.exact import ExactDistribution
from tests.helpers import assert_one_step_marginals_match_the_product

TASKS = ["checkerboard", "swiss_roll", "circles", "copy", "parity", "mixture", "product"]


def data_config(task, **overrides):
  c = toy_configs.get_config(f"mdlm,{task},tiny").data
  c.update(**{"toy_bins": 16, **overrides})
  return c


@pytest.mark.parametrize("task", TASKS)
def test_exact_distribution_sums_to_one_and_matches_sample_frequencies(task):
  vocab, exact = toys.toy_task(data_config(task))
  assert exact.probs.shape == (vocab,) * data_config(task).seq_len
  assert exact.probs.min() >= 0 and exact.probs.sum() == pytest.approx(1.0, abs=1e-9)
  samples = exact.sample(np.random.default_rng(0), 200_000)
  assert samples.dtype == np.int32 and samples.min() >= 0 and samples.max() < vocab
  empirical = exact_metrics.normalised(exact_metrics.sample_counts(samples, exact.probs.shape))
  # Sampling noise alone gives TV ~ 0.4 sqrt(states / n) <= 0.015 here.
  assert exact_metrics.total_variation(empirical, exact.probs) < 0.02
  assert np.all(np.isfinite(exact.log_prob(samples)))


def test_checkerboard_histogram_is_uniform_on_half_the_cells():
  _, exact = toys.toy_task(data_config("checkerboard", toy_bins=128))
  assert exact.entropy() == pytest.approx(math.log(128 * 128 / 2), abs=1e-9)
  cells = exact_metrics.pool_2d(exact.probs, 4)
  np.testing.assert_allclose(cells, np.where(np.indices((4, 4)).sum(0) % 2 == 0, 1 / 8, 0.0), atol=1e-12)


def test_dependency_tables_have_the_stated_structure():
  _, copy = toys.toy_task(data_config("copy", toy_vocab=4, copy_prob=0.6))
  np.testing.assert_allclose(np.diag(copy.probs), (0.6 + 0.4 / 4) / 4)
  np.testing.assert_allclose(copy.probs.sum(0), 0.25)
  _, parity = toys.toy_task(data_config("parity"))
  bits = np.indices((2,) * 4).reshape(4, -1).T
  valid = bits[:, 3] == bits[:, :3].sum(1) % 2
  np.testing.assert_allclose(parity.probs[tuple(bits.T)], np.where(valid, 1 / 8, 0.0))
  assert parity.log_prob(np.array([[1, 1, 0, 1]]))[0] == -np.inf
  _, product = toys.toy_task(data_config("product"))
  marginals = [product.probs.sum(tuple(a for a in range(4) if a != i)) for i in range(4)]
  np.testing.assert_allclose(product.probs, functools.reduce(np.multiply.outer, marginals), atol=1e-15)
  assert min(np.abs(p - q).sum() for i, p in enumerate(marginals) for q in marginals[:i]) > 0.3  # no two alike


def test_one_step_mdlm_samples_every_position_from_its_own_marginal():
  assert_one_step_marginals_match_the_product("mdlm")


def test_dataset_examples_are_reproducible_and_bad_settings_rejected():
  dataset = build_dataset(data_config("parity"), None)
  assert dataset.vocab_size == 2 and dataset.exact.metrics == ("kl", "tv")
  first = np.stack([dataset.train_examples[i] for i in range(64)])
  rebuilt = build_dataset(data_config("parity"), None)
  np.testing.assert_array_equal(np.stack([rebuilt.train_examples[i] for i in range(64)]), first)
  reseeded = build_dataset(data_config("parity", shuffle_seed=1), None)
  assert (np.stack([reseeded.train_examples[i] for i in range(64)]) != first).any()
  held_out = np.stack([dataset.eval_examples[i] for i in range(64)])
  assert (held_out != first).any()  # the splits are distinct streams
  assert np.all(first[:, 3] == first[:, :3].sum(1) % 2)
  with pytest.raises(DataError, match="seq_len=2"):
    toys.toy_task(data_config("checkerboard", seq_len=3))


def test_metrics_are_zero_on_the_truth_and_match_hand_computed_values():
  truth = np.array([0.5, 0.5])
  point = np.array([1.0, 0.0])
  # m = (0.75, 0.25): KL(truth || m) = log(4/3) / 2, KL(point || m) = log(4/3).
  assert exact_metrics.js_divergence(truth, point) == pytest.approx(0.75 * math.log(4 / 3))
  assert exact_metrics.total_variation(truth, point) == pytest.approx(0.5)
  assert exact_metrics.kl_divergence(point, truth) == pytest.approx(math.log(2))
  assert exact_metrics.kl_divergence(truth, point) == math.inf
  for metric in (exact_metrics.js_divergence, exact_metrics.kl_divergence, exact_metrics.total_variation):
    assert metric(truth, truth) == 0.0


def test_one_step_factorised_checkerboard_scores_the_closed_form():
  """Product of the uniform marginals = uniform on 16 cells vs the truth on 8:
  JS = 3/4 log(4/3) at any resolution that keeps the cells whole."""
  _, exact = toys.toy_task(data_config("checkerboard", toy_bins=32))
  product = np.full(exact.probs.shape, 1 / exact.probs.size)
  for bins in (32, 8, 4):
    pooled = [exact_metrics.pool_2d(p, bins) for p in (product, exact.probs)]
    assert exact_metrics.js_divergence(*pooled) == pytest.approx(0.75 * math.log(4 / 3))


def test_sample_metrics_of_true_samples_are_near_zero_and_pooling_sums():
  _, exact = toys.toy_task(data_config("parity"))
  result = exact_metrics.sample_metrics(exact.sample(np.random.default_rng(1), 50_000), exact.probs, exact.metrics)
  assert set(result) == {"kl", "tv"} and result["kl"] < 1e-3 and result["tv"] < 0.01
  uniform = np.full((2, 2, 2, 2), 1 / 16)
  assert exact_metrics.kl_divergence(exact.probs, uniform) == pytest.approx(math.log(2))
  hist = np.arange(16.0).reshape(4, 4)
  np.testing.assert_array_equal(exact_metrics.pool_2d(hist, 2), [[10, 18], [42, 50]])
  with pytest.raises(ValueError, match="divisor"):
    exact_metrics.pool_2d(hist, 3)


@pytest.mark.parametrize("exact", [toys.toy_task(data_config("copy", toy_vocab=4))[1],
                                   toys.toy_task(data_config("checkerboard"))[1],
                                   BinsawDensity(length=16, saws=2, floor=0.05)],
                         ids=["copy", "checkerboard", "binsaw"])
def test_every_exact_distribution_offers_the_protocol(exact):
  """log_prob, sample, entropy and metrics agree with each other, and a metric is only
  offered with the table it needs (ladd.evaluate asks `metrics`, not the type)."""
  assert isinstance(exact, ExactDistribution)
  samples = exact.sample(np.random.default_rng(0), 4000)
  assert samples.dtype == np.int32 and samples.ndim == 2
  nll = -exact.log_prob(samples)
  # H = E[-log p(x)]: the sample mean is within 4 standard errors
  assert exact.entropy() == pytest.approx(nll.mean(), abs=4 * nll.std() / np.sqrt(len(nll)) + 1e-3)
  assert set(exact.metrics) <= {"js", "kl", "tv"}
  if exact.metrics:
    assert exact.probs.sum() == pytest.approx(1.0) and exact.probs.ndim == samples.shape[1]
  else:
    assert exact.probs is None
