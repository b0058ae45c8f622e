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


def _noisy_accumulator(consts):
  """A scan body with every input kind: carry, a key and a per-step x, a constant."""

  def step(carry, inputs):
    key, x = inputs
    carry = carry * consts + x + jax.random.normal(key, ())
    return carry, {"carry": carry, "twice_x": 2.0 * x}

  return step


def test_chunked_scan_matches_a_python_loop():
  keys = jax.random.split(jax.random.PRNGKey(0), 7)
  chunks = []
  carry, out = mi.chunked_scan(_noisy_accumulator, jnp.float32(1.0), keys, jnp.arange(7.0),
                               jnp.float32(0.5), chunk=3, on_chunk=chunks.append)
  expected, value = [], 1.0
  for t in range(7):  # the recurrence in float64, step by step
    value = value * 0.5 + t + float(jax.random.normal(keys[t], ()))
    expected.append(value)
  assert chunks == [3, 3, 1]
  assert isinstance(out["carry"], np.ndarray) and out["carry"].shape == (7,)
  np.testing.assert_allclose(out["carry"], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out["twice_x"], 2.0 * np.arange(7.0))
  assert float(carry) == pytest.approx(expected[-1], rel=1e-6)
  # the chunking does not change the numbers; no steps: the carry back, no outputs
  _, whole = mi.chunked_scan(_noisy_accumulator, jnp.float32(1.0), keys, jnp.arange(7.0),
                             jnp.float32(0.5), chunk=100)
  np.testing.assert_array_equal(whole["carry"], out["carry"])
  assert mi.chunked_scan(lambda _: None, 3.0, keys[:0], chunk=2) == (3.0, None)


def test_chunked_scan_rejects_bad_arguments():
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  with pytest.raises(ValueError, match="chunk"):
    mi.chunked_scan(_noisy_accumulator, 0.0, keys, jnp.zeros(4), 1.0, chunk=0)
  with pytest.raises(ValueError, match="xs must hold one entry per key"):
    mi.chunked_scan(_noisy_accumulator, 0.0, keys, jnp.zeros(3), 1.0, chunk=2)


def _bit_channel(num_bits):
  """A label channel whose tiles are single pixels: 0 for class 0, 255 for class 1, so a
  flattened view is its bits."""
  images = np.repeat(np.array([0, 255], np.uint8), 5).reshape(10, 1, 1, 1)
  labels = np.repeat([0, 1], 5)
  return mi.label_channel(images, labels, num_bits=num_bits, flip_prob=0.5)


def _column_probe(train_x, train_y, test_x, test_y, *, num_classes):
  """A stand-in for `linear_probe` (compiling it takes ~10 s): the best single feature column
  read as the bit."""
  assert num_classes == 2 and train_y.ndim == 1 and test_y.shape == (len(test_x),)
  return {"accuracy": max(float(np.mean(test_x[:, j] == test_y)) for j in range(test_x.shape[1]))}


def test_label_channel_views_and_bit_probes_on_pixel_bits(monkeypatch):
  channels = [_bit_channel(2), _bit_channel(2)]
  x1, x2 = jax.jit(mi.label_channel_views(channels[0]), static_argnums=1)(
      jax.random.PRNGKey(0), 6)
  raw1, raw2, bits1, bits2 = mi.sample_label_channel(jax.random.PRNGKey(0), channels[0], 6)
  np.testing.assert_array_equal(np.asarray(x1), np.asarray(bits1, np.float32))
  np.testing.assert_array_equal(np.asarray(x2), np.asarray(bits2, np.float32))
  # representation 0 sees both bits, representation 1 only bit 0
  reps = jnp.asarray([[1.0, 1.0], [1.0, 0.0]])
  probe = mi.probe_features(lambda rep, x: x * rep, reps, channels, jax.random.PRNGKey(1), 200)
  (train_f, train_b), (test_f, test_b) = probe
  assert train_f.shape == (2, 200, 2) and test_b.shape == (200, 2)
  np.testing.assert_array_equal(np.asarray(train_f[0]), np.asarray(train_b, np.float32))
  monkeypatch.setattr(mi.training.evaluate, "linear_probe", _column_probe)
  accuracies = mi.bit_probe_accuracies(probe, {"first": slice(0, 1), "second": slice(1, None),
                                               "both": slice(None)})
  assert accuracies[0] == {"first": 1.0, "second": 1.0, "both": 1.0}
  assert accuracies[1]["first"] == 1.0 and abs(accuracies[1]["second"] - 0.5) < 0.1
  assert accuracies[1]["both"] == pytest.approx((1.0 + accuracies[1]["second"]) / 2)
  with pytest.raises(ValueError, match="probe_data"):
    mi.bit_probe_accuracies(probe[:1], {"first": slice(0, 1)})
