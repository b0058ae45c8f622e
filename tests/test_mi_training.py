"""contrax.mi.training: `estimate_mi` on a known-MI Gaussian task, and the study helpers."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrax import mi

TRUE_MI = 2.0
# SMILE-1 is no bound: its clip biases it up.
TOLERANCE = {name: 0.35 for name in mi.ESTIMATORS} | {"smile-1": 0.45}


def _gaussian_pairs(mi_nats, dim, n, seed=1):
  rho = jnp.full((dim,), mi.gaussian_correlation(mi_nats, dim))
  return mi.correlated_gaussian(jax.random.PRNGKey(seed), n, rho)


def test_estimate_mi_infonce_is_close_to_the_truth_fast():
  x, y = _gaussian_pairs(1.0, 2, 4000)
  result = mi.estimate_mi(x, y, estimator="infonce", steps=600, batch_size=64, hidden_dim=32,
                          embed_dim=8)
  assert result.objective == "infonce" and result.train_trace.shape == (600,)
  assert np.all(np.isfinite(result.train_trace))
  assert abs(result.estimate - 1.0) <= 0.25
  assert result.estimate <= math.log(64)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", mi.ESTIMATORS)
def test_estimate_mi_every_estimator_within_tolerance_of_the_truth(estimator):
  x, y = _gaussian_pairs(TRUE_MI, 4, 20000)
  result = mi.estimate_mi(x, y, estimator=estimator)
  assert abs(result.estimate - TRUE_MI) <= TOLERANCE[estimator], result


def test_estimate_mi_rejects_bad_arguments():
  x, y = _gaussian_pairs(1.0, 2, 100)
  with pytest.raises(ValueError, match="estimator"):
    mi.estimate_mi(x, y, estimator="mi")
  with pytest.raises(ValueError, match="critic"):
    mi.estimate_mi(x, y, critic="quadratic")
  with pytest.raises(ValueError, match="x and y"):
    mi.estimate_mi(x, y[:50])
  with pytest.raises(ValueError, match="held-out batch"):
    mi.estimate_mi(x, y, batch_size=64)
  with pytest.raises(ValueError, match="learning_rate"):
    mi.estimate_mi(x, y, learning_rate=0.0)


def test_masked_infonce_is_infonce_of_the_leading_block():
  scores = jax.random.normal(jax.random.PRNGKey(0), (9, 9)) * 3.0
  masked = jax.jit(mi.masked_infonce)
  for n in (2, 5, 9):
    np.testing.assert_allclose(float(masked(scores, float(n))),
                               float(mi.infonce(scores[:n, :n])), rtol=1e-5, atol=1e-6)


def test_pair_scores_dot_and_distance():
  rng = np.random.default_rng(0)
  zx, zy = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
  np.testing.assert_allclose(np.asarray(mi.pair_scores(jnp.asarray(zx), jnp.asarray(zy))),
                             zx @ zy.T, rtol=1e-5, atol=1e-5)
  distance = -0.5 * np.sum((zx[:, None] - zy[None]) ** 2, axis=-1)
  np.testing.assert_allclose(
      np.asarray(mi.pair_scores(jnp.asarray(zx), jnp.asarray(zy), 1.0)), distance,
      rtol=1e-5, atol=1e-5)
