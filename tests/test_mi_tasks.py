"""contrax.mi.tasks against closed forms: log-det MI, canonical correlations, SciPy densities,
the enumerated label channel."""
from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from contrax import mi

# ----------------------------------------------------------------------------- Gaussian tasks


def test_gaussian_correlation_gives_target_mi_and_matches_logdet_formula():
  for target, dim in ((2.0, 20), (10.0, 20), (0.5, 3)):
    rho = np.full(dim, mi.gaussian_correlation(target, dim))
    assert mi.gaussian_mi(rho) == pytest.approx(target, rel=1e-12)
    cov = np.block([[np.eye(dim), np.diag(rho)], [np.diag(rho), np.eye(dim)]])
    assert mi.gaussian_mi_from_covariance(cov, dim) == pytest.approx(target, rel=1e-10)


def test_log_density_ratio_matches_scipy_densities_and_cubic_map():
  rho = np.array([0.8, -0.3, 0.5])
  x, y = mi.correlated_gaussian(jax.random.PRNGKey(0), 5, rho)
  x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
  cov = np.block([[np.eye(3), np.diag(rho)], [np.diag(rho), np.eye(3)]])
  joint = stats.multivariate_normal(np.zeros(6), cov)
  marginal = stats.multivariate_normal(np.zeros(3), np.eye(3))
  expected = np.array([[joint.logpdf(np.concatenate([xi, yj])) - marginal.logpdf(xi)
                        - marginal.logpdf(yj) for yj in y64] for xi in x64])
  np.testing.assert_allclose(np.asarray(mi.gaussian_log_density_ratio(x, y, rho)), expected,
                             rtol=1e-4, atol=1e-4)
  cubed = mi.gaussian_log_density_ratio(x, y**3, rho, cubic=True)
  np.testing.assert_allclose(np.asarray(cubed), expected, rtol=1e-4, atol=1e-4)


def test_correlated_gaussian_has_the_requested_correlation():
  rho = np.array([0.9, 0.0, -0.5])
  x, y = mi.correlated_gaussian(jax.random.PRNGKey(1), 20_000, rho)
  x, y = np.asarray(x), np.asarray(y)
  corr = [np.corrcoef(x[:, i], y[:, i])[0, 1] for i in range(3)]
  np.testing.assert_allclose(corr, rho, atol=0.03)
  np.testing.assert_allclose(y.std(axis=0), 1.0, atol=0.03)
  _, y3 = mi.correlated_gaussian(jax.random.PRNGKey(1), 10, rho, cubic=True)
  _, y1 = mi.correlated_gaussian(jax.random.PRNGKey(1), 10, rho)
  np.testing.assert_allclose(np.asarray(y3), np.asarray(y1)**3, rtol=1e-5)


OPTIMAL_TRUE_MI = 1.0
OPTIMAL_NAMES = ("infonce", "nwj", "dv", "mine", "js", "smile-5", "smile-inf")


@pytest.fixture(scope="module")
def optimal_critic_estimates():
  """Each estimator on 12 batches of K = 512 pairs scored by the optimal critic `log r`."""
  dim, k, reps = 2, 512, 12
  rho = np.full(dim, mi.gaussian_correlation(OPTIMAL_TRUE_MI, dim))

  @jax.jit
  def estimate(key):
    x, y = mi.correlated_gaussian(key, k, rho)
    scores = mi.gaussian_log_density_ratio(x, y, rho)
    return {n: mi.objective(n, scores + 1.0 if n == "nwj" else scores, mi.mine_init())[0]
            for n in OPTIMAL_NAMES}

  runs = [estimate(jax.random.PRNGKey(i)) for i in range(reps)]
  return {n: np.array([float(r[n]) for r in runs]) for n in OPTIMAL_NAMES}


@pytest.mark.parametrize("name", OPTIMAL_NAMES)
def test_optimal_critic_estimates_true_mi_within_sampling_error(name, optimal_critic_estimates):
  """With `S = log r` (NWJ: `1 + log r`), each estimator is near the true MI.

  SMILE-1 is left out: clipping at τ = 1 biases it by design. InfoNCE carries its known
  finite-K bias, small here since I = 1 nat ≪ log 512.
  """
  true_mi = OPTIMAL_TRUE_MI
  values = optimal_critic_estimates[name]
  reps = len(values)
  standard_error = values.std(ddof=1) / math.sqrt(reps)
  bias_allowance = 0.03 if name == "infonce" else 0.0
  assert abs(values.mean() - true_mi) <= 4 * standard_error + bias_allowance + 0.01, (
      values.mean(), standard_error)


def _canonical_mi(cov, dx):
  """`−½ Σ log(1 − c_i²)` over the canonical correlations c_i (an independent formula)."""
  s11, s22, s12 = cov[:dx, :dx], cov[dx:, dx:], cov[:dx, dx:]
  inv_sqrt = lambda m: np.linalg.inv(np.linalg.cholesky(m))  # noqa: E731
  c = np.linalg.svd(inv_sqrt(s11) @ s12 @ inv_sqrt(s22).T, compute_uv=False)
  return -0.5 * np.sum(np.log1p(-c**2))


def test_linear_features_mi_matches_canonical_correlations_and_selection():
  rho = np.array([0.95, 0.9, 0.5, 0.2, 0.1])
  select = np.eye(5)[:2]
  assert mi.linear_features_mi(rho, select) == pytest.approx(
      -0.5 * np.sum(np.log1p(-rho[:2]**2)), rel=1e-10)
  rng = np.random.default_rng(0)
  w1, w2 = rng.normal(size=(3, 5)), rng.normal(size=(2, 5))
  cov = np.block([[w1 @ w1.T, (w1 * rho) @ w2.T], [((w1 * rho) @ w2.T).T, w2 @ w2.T]])
  assert mi.linear_features_mi(rho, w1, w2) == pytest.approx(_canonical_mi(cov, 3), rel=1e-8)
  # invertible maps of the features leave the MI unchanged; it never exceeds I(X; Y)
  a = rng.normal(size=(3, 3))
  assert mi.linear_features_mi(rho, a @ w1, w2) == pytest.approx(
      mi.linear_features_mi(rho, w1, w2), rel=1e-8)
  assert mi.linear_features_mi(rho, w1) <= mi.gaussian_mi(rho)


# ----------------------------------------------------------------------------- label channel


def _enumerated_mi_bits(probs):
  n = len(probs)
  joint = {}
  for b1 in itertools.product((0, 1), repeat=n):
    for b2 in itertools.product((0, 1), repeat=n):
      p = 0.5**n
      for k in range(n):
        p *= probs[k] if b1[k] != b2[k] else 1 - probs[k]
      joint[(b1, b2)] = p
  p1 = {b: sum(v for (a, _), v in joint.items() if a == b) for b in itertools.product((0, 1),
                                                                                       repeat=n)}
  p2 = {b: sum(v for (_, a), v in joint.items() if a == b) for b in p1}
  return sum(v * math.log2(v / (p1[a] * p2[b])) for (a, b), v in joint.items() if v > 0)


@pytest.mark.parametrize("probs", [[0.1], [0.0, 0.5], [0.2, 0.2, 0.2], [0.05, 0.3, 0.5]])
def test_label_channel_mi_matches_enumerated_joint(probs):
  expected = _enumerated_mi_bits(probs)
  assert mi.label_channel_mi(len(probs), probs, unit="bits") == pytest.approx(expected, abs=1e-12)
  assert mi.label_channel_mi(len(probs), probs) == pytest.approx(expected * math.log(2),
                                                                 abs=1e-12)
  if len(set(probs)) == 1:
    h = stats.entropy([probs[0], 1 - probs[0]], base=2)
    assert mi.label_channel_mi(len(probs), probs[0], unit="bits") == pytest.approx(
        len(probs) * (1 - h), abs=1e-12)


def _index_pool(counts=(7, 5, 9)):
  """Images whose pixel value is their own row index, labels 0, 1, 2 (class 2 unused)."""
  labels = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
  rng = np.random.default_rng(0)
  labels = rng.permutation(labels)
  images = np.broadcast_to(np.arange(len(labels), dtype=np.uint8)[:, None, None, None],
                           (len(labels), 2, 3, 1)).copy()
  return images, labels


def test_label_channel_samples_follow_the_channel():
  images, labels = _index_pool()
  channel = mi.label_channel(images, labels, num_bits=3, flip_prob=[0.0, 0.25, 0.5],
                             classes=(1, 0))
  x1, x2, b1, b2 = jax.jit(mi.sample_label_channel, static_argnums=2)(
      jax.random.PRNGKey(0), channel, 4000)
  x1, x2, b1, b2 = map(np.asarray, (x1, x2, b1, b2))
  assert x1.shape == (4000, 2, 9, 1) and x1.dtype == np.uint8
  rows1 = x1[:, 0, ::3, 0].astype(int)  # the index of each tile's image
  rows2 = x2[:, 0, ::3, 0].astype(int)
  classes = np.array([1, 0])
  np.testing.assert_array_equal(labels[rows1], classes[b1])
  np.testing.assert_array_equal(labels[rows2], classes[b2])
  same = b1 == b2
  assert np.all(rows1[same] != rows2[same])  # positives are two different images
  np.testing.assert_allclose((b1 != b2).mean(axis=0), [0.0, 0.25, 0.5], atol=0.03)
  np.testing.assert_allclose(b1.mean(axis=0), 0.5, atol=0.03)
  # every image of a class is drawn
  assert set(rows1[b1 == 0]) == set(np.flatnonzero(labels == 1))
  assert channel.mi_nats == pytest.approx(mi.label_channel_mi(3, [0.0, 0.25, 0.5]))


def test_bad_task_inputs_raise_naming_the_argument():
  with pytest.raises(ValueError, match="mi_nats"):
    mi.gaussian_correlation(-1.0, 3)
  with pytest.raises(ValueError, match="rho"):
    mi.correlated_gaussian(jax.random.PRNGKey(0), 4, np.array([0.5, 1.0]))
  with pytest.raises(ValueError, match="dim_x"):
    mi.gaussian_mi_from_covariance(np.eye(4), 4)
  with pytest.raises(ValueError, match="positive definite"):
    mi.gaussian_mi_from_covariance(np.ones((4, 4)), 2)
  with pytest.raises(ValueError, match="w1"):
    mi.linear_features_mi(np.array([0.5, 0.5]), np.ones((1, 3)))
  images, labels = _index_pool()
  with pytest.raises(ValueError, match="flip_prob"):
    mi.label_channel(images, labels, num_bits=2, flip_prob=0.7)
  with pytest.raises(ValueError, match="flip_prob"):
    mi.label_channel(images, labels, num_bits=2, flip_prob=[0.1, 0.1, 0.1])
  with pytest.raises(ValueError, match="classes"):
    mi.label_channel(images, labels, num_bits=2, flip_prob=0.1, classes=(0, 0))
  with pytest.raises(ValueError, match="classes"):
    mi.label_channel(images, labels, num_bits=2, flip_prob=0.1, classes=(0, 7))
  with pytest.raises(ValueError, match="num_bits"):
    mi.label_channel(images, labels, num_bits=0, flip_prob=0.1)
  with pytest.raises(TypeError, match="images"):
    mi.label_channel(images.astype(np.float32), labels, num_bits=2, flip_prob=0.1)
  with pytest.raises(ValueError, match="same length"):
    mi.label_channel(images, labels[:-1], num_bits=2, flip_prob=0.1)
  with pytest.raises(ValueError, match="unit"):
    mi.label_channel_mi(2, 0.1, unit="bans")
