"""Known-answer tests of LADD's latent mathematics (method.md §2): the Gaussian latent
process and vector quantisation. Pure functions: no networks, no compilation to speak of."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ladd.diffusion import gaussian, vq

KINDS = gaussian.GAUSSIAN_SCHEDULES


@pytest.mark.parametrize("kind", KINDS)
def test_schedule_is_clamped_variance_preserving_and_decreasing(kind):
  s = gaussian.GaussianSchedule(kind, eps=1e-3)
  assert float(s.alpha_sq(0.0)) == pytest.approx(1 - 1e-3, abs=1e-6)
  assert float(s.alpha_sq(1.0)) == pytest.approx(1e-3, abs=1e-6)
  t = jnp.linspace(0.01, 0.99, 50)
  np.testing.assert_allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, 1.0, rtol=1e-6)
  assert np.all(np.diff(np.asarray(s.snr(t))) < 0)


def test_default_latent_stays_cleaner_than_linear():
  t = jnp.linspace(0.05, 0.95, 10)
  assert np.all(gaussian.GaussianSchedule("sqrt").alpha_sq(t) > gaussian.GaussianSchedule("linear").alpha_sq(t))


@pytest.mark.parametrize("kind", KINDS)
def test_elbo_weight_is_half_the_snr_derivative_and_integrates_to_the_snr_drop(kind):
  """w(t) = -SNR'(t)/2 analytic, finite on [0, 1) (the old finite difference read SNR at
  t - eps, negative times for t < eps, as under a time shift below 1), and
  int_{t0}^{1} w = (SNR(t0) - SNR(1)) / 2."""
  s = gaussian.GaussianSchedule(kind, eps=1e-2)
  t = jnp.linspace(0.05, 0.95, 19)
  h = 1e-3
  np.testing.assert_allclose(s.elbo_weight(t), -0.5 * (s.snr(t + h) - s.snr(t - h)) / (2 * h), rtol=2e-3)
  assert np.all(np.isfinite(np.asarray(s.elbo_weight(jnp.array([0.0, 1e-6, 1.0 - 1e-6])))))
  grid = np.linspace(0.2, 1.0, 400001)[:-1]  # the sqrt schedule's 1/sqrt(1 - t) is integrable
  snr = lambda x: float(s.snr(jnp.float32(x)))
  integral = np.trapezoid(np.asarray(s.elbo_weight(jnp.asarray(grid)), np.float64), grid)
  assert integral == pytest.approx(0.5 * (snr(0.2) - snr(1.0)), rel=5e-3)


def test_ddim_step_is_exact_when_the_prediction_is_exact():
  s = gaussian.GaussianSchedule("sqrt")
  k0, k1 = jax.random.split(jax.random.key(0))
  y0 = jax.random.normal(k0, (4, 2, 8))
  noise = jax.random.normal(k1, y0.shape)
  for t, u in ((1.0, 0.7), (0.7, 0.3), (0.3, 1e-4)):
    y_t = gaussian.noisy(s, y0, noise, t)
    np.testing.assert_allclose(gaussian.ddim_step(s, y_t, y0, t, u), gaussian.noisy(s, y0, noise, u), atol=1e-5)


def test_ancestral_step_keeps_the_forward_marginal():
  """y_t ~ q(y_t|y0), then y_s ~ q(y_s|y_t, y0) gives y_s ~ N(a_s y0, sigma_s^2)."""
  s = gaussian.GaussianSchedule("linear")
  y0 = jnp.full((200000,), 0.7)
  t, u = 0.8, 0.3
  y_t = gaussian.noisy(s, y0, jax.random.normal(jax.random.key(1), y0.shape), t)
  y_s = gaussian.ancestral_step(s, jax.random.key(2), y_t, y0, t, u)
  assert float(y_s.mean()) == pytest.approx(float(s.alpha(u)) * 0.7, abs=0.01)
  assert float(y_s.std()) == pytest.approx(float(s.sigma(u)), rel=0.01)


def test_time_shift_fixes_the_ends_and_a_below_one_lowers_t():
  t = jnp.linspace(0, 1, 11)
  np.testing.assert_allclose(gaussian.time_shift(t, 1.0), t, atol=1e-7)
  shifted = gaussian.time_shift(t, 0.3)
  assert float(shifted[0]) == 0 and float(shifted[-1]) == pytest.approx(1.0)
  assert np.all(np.asarray(shifted[1:-1]) < np.asarray(t[1:-1]))


@pytest.mark.parametrize("shift, lead", [(1.0, 0.0), (0.5, 0.0), (1.0, 0.6), (0.5, 0.6)])
def test_latent_path_is_monotone_with_its_ends_and_its_derivative(shift, lead):
  eps = 1e-2
  u = jnp.linspace(eps, 1.0, 2001, dtype=jnp.float32)
  t_y, dt_du = gaussian.latent_path(u, shift, lead, eps)
  np.testing.assert_allclose(t_y[-1], 1.0, rtol=1e-6)
  np.testing.assert_allclose(t_y[0], gaussian.time_shift(eps, shift), rtol=1e-6)  # the shift path's end
  assert np.all(np.diff(np.asarray(t_y)) >= 0) and np.all(np.asarray(dt_du) >= 0)
  if lead == 0:  # lead 0 is the shift path itself, bit for bit
    np.testing.assert_array_equal(t_y, gaussian.time_shift(u, shift))
  # the latent rests at its end (dt_y/du = 0) until u = lead + eps (1 - lead), then moves
  rests = np.asarray(u) < lead + eps * (1 - lead) - 1e-6
  np.testing.assert_array_equal(np.asarray(dt_du)[rests], 0.0)
  np.testing.assert_allclose(np.asarray(t_y)[rests], float(gaussian.time_shift(eps, shift)), rtol=1e-6)
  # dt_y/du against central differences away from the kink; its integral is the path's rise
  h = 1e-3
  inner = np.asarray(jnp.abs(u - (lead + eps * (1 - lead))) > 2 * h) & (np.asarray(u) < 1 - h) & (np.asarray(u) > eps + h)
  fd = (gaussian.latent_path(u + h, shift, lead, eps)[0] - gaussian.latent_path(u - h, shift, lead, eps)[0]) / (2 * h)
  np.testing.assert_allclose(np.asarray(dt_du)[inner], np.asarray(fd)[inner], rtol=2e-3, atol=1e-3)
  rise = np.trapezoid(np.asarray(dt_du, np.float64), np.asarray(u, np.float64))
  assert rise == pytest.approx(1.0 - float(t_y[0]), abs=2e-3)


def test_prior_kl_is_zero_for_a_matched_prior_and_grows_with_the_mean():
  s = gaussian.GaussianSchedule("sqrt")
  zero = s.prior_kl(jnp.zeros((2, 1, 4)))
  assert float(zero[0]) == pytest.approx(0.0, abs=1e-6)  # alpha(1)^2 = eps: nearly N(0, I)
  assert float(s.prior_kl(jnp.ones((1, 1, 4)) * 10)[0]) > float(zero[0])


def test_nearest_code_and_straight_through_gradient():
  codebook = jnp.array([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.5]])
  z = jnp.array([[0.9, 1.2], [-1.5, 0.0], [0.1, -0.1]])
  ids, z_q = vq.nearest_code(z, codebook)
  np.testing.assert_array_equal(ids, [1, 2, 0])
  np.testing.assert_allclose(z_q, codebook[ids])
  grad = jax.grad(lambda z: jnp.sum(vq.straight_through(z, vq.nearest_code(z, codebook)[1]) * 3.0))(z)
  np.testing.assert_allclose(grad, 3.0)  # identity gradient, although z_q is piecewise constant


def test_commitment_gradient_pulls_toward_the_code_only():
  z, z_q = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 0.0]])
  grad = jax.grad(lambda z: vq.commitment_loss(z, z_q, 0.25))(z)
  np.testing.assert_allclose(grad, [[0.5, 0.0]])


def test_ema_update_moves_codes_to_their_cluster_means():
  counts, sums = jnp.ones((2,)), jnp.array([[0.0, 0.0], [5.0, 5.0]])
  z = jnp.array([[1.0, 1.0], [3.0, 1.0]])
  ids = jnp.array([0, 0])
  for _ in range(300):
    counts, sums = vq.ema_update(counts, sums, z, ids, decay=0.9)
  np.testing.assert_allclose(vq.codebook_from_ema(counts, sums)[0], [2.0, 1.0], rtol=1e-3)


def test_dead_codes_restart_at_batch_vectors():
  counts = jnp.array([10.0, 1e-6, 10.0])
  sums = jnp.array([[10.0, 0.0], [0.0, 0.0], [0.0, 10.0]])
  z = jnp.array([[7.0, 7.0], [8.0, 8.0]])
  counts, sums = vq.restart_dead_codes(counts, sums, z)
  codebook = vq.codebook_from_ema(counts, sums)
  np.testing.assert_allclose(codebook[1], [8.0, 8.0], rtol=1e-4)
  np.testing.assert_allclose(codebook[0], [1.0, 0.0], rtol=1e-4)


def test_usage_metrics():
  uniform = vq.usage_metrics(jnp.arange(8) % 4, 8)
  assert float(uniform["code_perplexity"]) == pytest.approx(4.0)
  assert float(uniform["code_usage"]) == pytest.approx(0.5)
