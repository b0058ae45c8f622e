"""CURL losses (contrax.losses.curl) against float64 NumPy oracles written from the formulas
of Arora et al. 2019 and Merad et al. 2020
(docs/references.md#curl-latent-classes-and-the-mean-classifier)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp

import jax
import jax.numpy as jnp

from contrax.losses import curl
from oracles import fd_grad, rel_err

M, K, D, BLOCK, C = 5, 3, 4, 2, 4


def oracle_scores(fx, fx_pos, fx_neg):
  v = np.zeros((fx.shape[0], fx_neg.shape[1]))
  for m in range(fx.shape[0]):
    for i in range(fx_neg.shape[1]):
      v[m, i] = fx[m] @ (fx_pos[m] - fx_neg[m, i])
  return v


def oracle_logistic(v, base=2.0):
  return float(np.mean([math.log(1.0 + np.sum(np.exp(-row)), base) for row in v]))


def oracle_hinge(v):
  return float(np.mean([max(0.0, 1.0 + np.max(-row)) for row in v]))


def oracle_mean_classifier(features, labels, num_classes):
  mu = np.zeros((num_classes, features.shape[1]))
  for c in range(num_classes):
    if np.any(labels == c):
      mu[c] = features[labels == c].mean(0)
  return mu


def oracle_multiway(features, labels, tasks, mu, loss, base=2.0):
  per_task = []
  for task in np.atleast_2d(tasks):
    losses = []
    for f, c in zip(features, labels):
      if c not in task:
        continue
      v = np.array([mu[c] @ f - mu[o] @ f for o in task if o != c])
      losses.append(oracle_logistic(v[None], base) if loss == "logistic" else oracle_hinge(v[None]))
    per_task.append(np.mean(losses) if losses else 0.0)
  return float(np.mean(per_task))


def tuples(seed, scale=1.0, block=False, m=M):
  rng = np.random.default_rng(seed)
  f = lambda *s: (scale * rng.normal(size=s)).astype(np.float32)
  if block:
    return f(m, D), f(m, BLOCK, D), f(m, K, BLOCK, D)
  return f(m, D), f(m, D), f(m, K, D)


def test_scores_match_oracle():
  fx, fp, fn = tuples(0)
  np.testing.assert_allclose(np.asarray(curl.curl_scores(fx, fp, fn)),
                             oracle_scores(fx, fp, fn), rtol=1e-5, atol=1e-6)


def test_block_scores_are_scores_of_means():
  fx, fp, fn = tuples(1, block=True)
  want = oracle_scores(fx, fp.astype(np.float64).mean(1), fn.astype(np.float64).mean(2))
  np.testing.assert_allclose(np.asarray(curl.curl_block_scores(fx, fp, fn)), want,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base,scale", [(2.0, 1.0), (math.e, 0.3), (10.0, 3.0)])
def test_logistic_loss_value_and_gradient(base, scale):
  fx, fp, fn = tuples(2, scale)
  loss = lambda a, b, c: curl.curl_loss(a, b, c, loss="logistic", base=base)
  oracle = lambda a, b, c: oracle_logistic(oracle_scores(a, b, c), base)
  value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(fx, fp, fn)
  np.testing.assert_allclose(float(value), oracle(fx, fp, fn), rtol=1e-5)
  assert rel_err(grads, fd_grad(oracle, fx, fp, fn)) < 1e-5


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_hinge_loss_value_and_gradient(scale):
  fx, fp, fn = tuples(3, scale)
  loss = lambda a, b, c: curl.curl_loss(a, b, c, loss="hinge")
  oracle = lambda a, b, c: oracle_hinge(oracle_scores(a, b, c))
  value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(fx, fp, fn)
  np.testing.assert_allclose(float(value), oracle(fx, fp, fn), rtol=1e-5)
  assert rel_err(grads, fd_grad(oracle, fx, fp, fn)) < 1e-5


def test_block_loss_gradient():
  fx, fp, fn = tuples(4, block=True)
  loss = lambda a, b, c: curl.curl_loss(a, b, c)
  oracle = lambda a, b, c: oracle_logistic(oracle_scores(a, b.mean(1), c.mean(2)))
  value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(fx, fp, fn)
  np.testing.assert_allclose(float(value), oracle(fx, fp, fn), rtol=1e-5)
  assert rel_err(grads, fd_grad(oracle, fx, fp, fn)) < 1e-5


def test_logistic_base2_is_one_at_zero_margin():
  # Arora et al.: with k = 1 and base 2, l(0) = log2(1 + 1) = 1; hinge l(0) = 1.
  v = jnp.zeros((3, 1))
  assert float(curl.logistic_loss(v)) == pytest.approx(1.0, abs=1e-7)
  assert float(curl.hinge_loss(v)) == pytest.approx(1.0, abs=1e-7)


def test_logistic_loss_is_finite_for_large_margins():
  v = jnp.array([[-1e4, 3.0], [1e4, 1e4]])
  value, g = jax.value_and_grad(curl.logistic_loss)(v)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(float(value), (1e4 / math.log(2)) / 2, rtol=1e-6)


def oracle_logistic_lse(v, base=2.0):
  """float64 `mean_m logsumexp([0, -v_m]) / ln b`, stable for any finite float64 v."""
  zero = np.zeros((v.shape[0], 1))
  return float(np.mean(logsumexp(np.concatenate([zero, -v], axis=1), axis=1)) / math.log(base))


def oracle_logistic_grads(fx, fx_pos, fx_neg, base=2.0):
  """float64 gradients of the mean logistic loss: `∂ℓ/∂v_i = -p_i / ln b` with
  `p = softmax([0, -v])`, through `v_i = fxᵀ (fx⁺ - fx⁻_i)`."""
  v = oracle_scores(fx, fx_pos, fx_neg)
  logits = np.concatenate([np.zeros((v.shape[0], 1)), -v], axis=1)
  p = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))[:, 1:]
  c = 1.0 / (math.log(base) * v.shape[0])
  d_fx = c * (np.einsum("mk,mkd->md", p, fx_neg) - p.sum(1, keepdims=True) * fx_pos)
  return d_fx, -c * p.sum(1, keepdims=True) * fx, c * p[:, :, None] * fx[:, None, :]


def oracle_hinge_grads(fx, fx_pos, fx_neg):
  """float64 gradients of the mean hinge loss: `-∂v_i*/∂f / M` where `1 - v_i* > 0`."""
  v = oracle_scores(fx, fx_pos, fx_neg)
  m = v.shape[0]
  grads = [np.zeros_like(fx), np.zeros_like(fx_pos), np.zeros_like(fx_neg)]
  for row, i in enumerate(np.argmin(v, axis=1)):
    if 1.0 - v[row, i] > 0:
      grads[0][row] = -(fx_pos[row] - fx_neg[row, i]) / m
      grads[1][row] = -fx[row] / m
      grads[2][row, i] = fx[row] / m
  return grads


def huge_tuples(seed, scale, margin_scale):
  """Features of size `scale` whose positives and negatives differ by about `margin_scale`,
  so that `fxᵀ fx⁺` is ~scale² but the scores only ~scale · margin_scale."""
  rng = np.random.default_rng(seed)
  fx = scale * rng.normal(size=(M, D))
  fx_pos = scale * rng.normal(size=(M, D))
  fx_neg = fx_pos[:, None, :] + margin_scale * rng.normal(size=(M, K, D))
  return tuple(x.astype(np.float32) for x in (fx, fx_pos, fx_neg))


@pytest.mark.parametrize("loss", ["logistic", "hinge"])
def test_losses_where_inner_products_overflow_float32(loss):
  """Entries ~1e20: `fxᵀ fx⁺` ~ 1e40 overflows float32, the scores (~1e35) and the losses do
  not. The scores were a difference of two overflowed products (inf - inf = NaN)."""
  fx, fp, fn = huge_tuples(5, 1e20, 1e15)
  value, grads = jax.value_and_grad(
      lambda a, b, c: curl.curl_loss(a, b, c, loss=loss, base=2.0), argnums=(0, 1, 2))(fx, fp, fn)
  f64 = [x.astype(np.float64) for x in (fx, fp, fn)]
  v = oracle_scores(*f64)
  # A score is a float32 sum of products ~1e35 that cancel down to as little as ~1e32: its
  # rounding error is relative to the largest scores, not to itself (hence the atol).
  np.testing.assert_allclose(np.asarray(curl.curl_scores(fx, fp, fn)), v, rtol=1e-5,
                             atol=1e-5 * np.abs(v).max())
  want = oracle_logistic_lse(v) if loss == "logistic" else oracle_hinge(v)
  want_grads = oracle_logistic_grads(*f64) if loss == "logistic" else oracle_hinge_grads(*f64)
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5 * np.abs(w).max())


def test_logistic_loss_beyond_the_float_range_is_inf_with_finite_exact_gradients():
  """Entries ~1e30 and margins ~1e28: scores ~±1e58, so the losses of tuples with a negative
  score are beyond float32 and the mean is +inf (not NaN), while every gradient, a weighted
  sum of features, is representable and equals the float64 one."""
  fx, fp, fn = huge_tuples(6, 1e30, 1e28)
  f64 = [x.astype(np.float64) for x in (fx, fp, fn)]
  assert oracle_logistic_lse(oracle_scores(*f64)) > 1e50
  value, grads = jax.value_and_grad(curl.curl_loss, argnums=(0, 1, 2))(fx, fp, fn)
  assert float(value) == math.inf
  for g, w in zip(grads, oracle_logistic_grads(*f64)):
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5 * np.abs(w).max())


def labelled(seed):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(9, D)).astype(np.float32)
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 1])  # class 3 absent
  return features, labels


def test_mean_classifier_matches_oracle():
  features, labels = labelled(5)
  mu = np.asarray(curl.mean_classifier(features, jnp.asarray(labels), C))
  np.testing.assert_allclose(mu, oracle_mean_classifier(features, labels, C), rtol=1e-6,
                             atol=1e-7)


@pytest.mark.parametrize("loss", ["logistic", "hinge"])
@pytest.mark.parametrize("tasks", [[2, 0, 1], [[0, 1], [1, 2], [0, 3]]])
def test_multiway_loss_value_and_gradient(loss, tasks):
  features, labels = labelled(6)
  mu = oracle_mean_classifier(features.astype(np.float64), labels, C).astype(np.float32)
  tasks_arr = np.asarray(tasks)
  ours = lambda f, m: curl.supervised_multiway_loss(f, jnp.asarray(labels), jnp.asarray(tasks_arr),
                                                    m, loss=loss)
  oracle = lambda f, m: oracle_multiway(f, labels, tasks_arr, m, loss)
  value, grads = jax.value_and_grad(ours, argnums=(0, 1))(features, mu)
  np.testing.assert_allclose(float(value), oracle(features, mu), rtol=1e-5)
  assert rel_err(grads, fd_grad(oracle, features, mu)) < 1e-5


def test_multiway_loss_of_perfect_features_is_small():
  """Well-separated classes: the mean classifier's margins are large, the loss near 0."""
  centres = 10.0 * np.eye(3, D)
  labels = np.array([0, 1, 2] * 3)
  features = (centres[labels] + 0.01 * np.random.default_rng(7).normal(size=(9, D))).astype(
      np.float32)
  mu = curl.mean_classifier(features, jnp.asarray(labels), 3)
  assert float(curl.supervised_multiway_loss(features, jnp.asarray(labels), jnp.array([0, 1, 2]),
                                             mu)) < 1e-6


def test_axis_name_gives_global_means():
  """A named vmap over shards of M (the collectives of shard_map) gives the global loss."""
  n, m = 3, 3
  fx, fp, fn = tuples(8, m=n * m)
  features, labels = labelled(9)
  labels = jnp.asarray(labels)
  task = jnp.array([0, 1])
  split = lambda a: a.reshape((n, m) + a.shape[1:])

  def losses(fx, fp, fn, features, labels, axis_name):
    mu = curl.mean_classifier(features, labels, C, axis_name=axis_name)
    return (curl.curl_loss(fx, fp, fn, axis_name=axis_name), mu,
            curl.supervised_multiway_loss(features, labels, task, mu, axis_name=axis_name))

  full = losses(fx, fp, fn, features, labels, None)
  sharded = jax.jit(jax.vmap(lambda *a: losses(*a, "d"), axis_name="d"))(
      *(split(a) for a in (fx, fp, fn, features, labels)))
  for want, got in zip(full, sharded):
    for k in range(n):
      np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("call,name", [
    (lambda: curl.curl_scores(np.ones((3, 4)), np.ones((3, 5)), np.ones((3, 2, 4))), "fx"),
    (lambda: curl.curl_scores(np.ones((3, 4)), np.ones((3, 4)), np.ones((3, 2, 5))), "fx_neg"),
    (lambda: curl.curl_scores(np.ones((3, 4)), np.ones((3, 4)), np.ones((3, 4))), "fx_neg"),
    (lambda: curl.logistic_loss(np.ones((3, 2)), base=1.0), "base"),
    (lambda: curl.logistic_loss(np.ones((3, 2)), base=-2.0), "base"),
    (lambda: curl.curl_loss(np.ones((3, 4)), np.ones((3, 4)), np.ones((3, 2, 4)), loss="x"),
     "loss"),
    (lambda: curl.mean_classifier(np.ones((3, 4)), np.array([0, 1]), 2), "labels"),
    (lambda: curl.mean_classifier(np.ones((3, 4)), np.array([0.0, 1, 1]), 2), "labels"),
    (lambda: curl.mean_classifier(np.ones((3, 4)), np.array([0, 1, 1]), 0), "num_classes"),
    (lambda: curl.supervised_multiway_loss(np.ones((3, 4)), np.array([0, 1, 1]),
                                           np.array([0, 0]), np.ones((2, 4))), "task_classes"),
    (lambda: curl.supervised_multiway_loss(np.ones((3, 4)), np.array([0, 1, 1]),
                                           np.array([0, 5]), np.ones((2, 4))), "task_classes"),
    (lambda: curl.supervised_multiway_loss(np.ones((3, 4)), np.array([0, 1, 1]),
                                           np.array([0, 1]), np.ones((2, 3))), "mu"),
])
def test_bad_arguments_raise(call, name):
  with pytest.raises(ValueError, match=name):
    call()
