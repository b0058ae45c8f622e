"""contrax.mi.estimators against float64 NumPy oracles written from the bounds' formulas."""
from __future__ import annotations

import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrax import mi

# ----------------------------------------------------------------------------- oracles


def _lse(a, axis=None):
  m = np.max(a, axis=axis, keepdims=True)
  out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
  return np.squeeze(out, axis=axis) if axis is not None else out.item()


def _offdiag(s):
  return s[~np.eye(s.shape[0], dtype=bool)]


def infonce_np(s):
  return np.mean(np.diag(s) - _lse(s, axis=1)) + np.log(s.shape[0])


def nwj_np(s):
  return np.mean(np.diag(s)) - np.exp(-1.0) * np.mean(np.exp(_offdiag(s)))


def dv_np(s):
  return np.mean(np.diag(s)) - (_lse(_offdiag(s)) - np.log(s.shape[0] * (s.shape[0] - 1)))


def js_fgan_np(s):
  softplus = lambda v: np.logaddexp(0.0, v)  # noqa: E731
  return np.mean(-softplus(-np.diag(s))) - np.mean(softplus(_offdiag(s)))


def smile_np(s, tau):
  clipped = np.clip(_offdiag(s), -tau, tau)
  return np.mean(np.diag(s)) - (_lse(clipped) - np.log(len(clipped)))


def numeric_grad(f, s, eps=1e-6):
  g = np.zeros_like(s)
  for idx in np.ndindex(s.shape):
    d = np.zeros_like(s)
    d[idx] = eps
    g[idx] = (f(s + d) - f(s - d)) / (2 * eps)
  return g


def score_matrices():
  rng = np.random.default_rng(0)
  return [rng.normal(size=(2, 2)), 3.0 * rng.normal(size=(5, 5)),
          rng.normal(size=(16, 16)) + 2.0 * np.eye(16),
          np.array([[40.0, -30.0, 5.0], [-60.0, 25.0, 0.0], [10.0, 3.0, -45.0]])]


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("name,oracle", [
    ("infonce", infonce_np), ("nwj", nwj_np), ("dv", dv_np),
    ("js", lambda s: nwj_np(s + 1.0)), ("smile-1", lambda s: smile_np(s, 1.0)),
    ("smile-5", lambda s: smile_np(s, 5.0)), ("smile-inf", dv_np), ("mine", dv_np)])
def test_estimator_values_match_float64_oracle(name, oracle, index):
  s = score_matrices()[index]
  if name == "nwj" and s.max() > 20:
    s = s / 10.0  # NWJ exponentiates raw scores; keep the oracle comparison in float32 range
  value, _ = mi.objective(name, jnp.asarray(s, jnp.float32), mi.mine_init())
  expected = oracle(s.astype(np.float32).astype(np.float64))
  np.testing.assert_allclose(float(value), expected, rtol=2e-5, atol=2e-5)


def test_js_fgan_matches_oracle_and_is_the_js_and_smile_gradient():
  s = score_matrices()[1]
  sj = jnp.asarray(s, jnp.float32)
  np.testing.assert_allclose(float(mi.js_fgan(sj)), js_fgan_np(s), rtol=1e-5, atol=1e-5)
  expected = numeric_grad(js_fgan_np, s)
  for fn in (mi.js, lambda a: mi.smile(a, 1.0), lambda a: mi.smile(a, math.inf)):
    np.testing.assert_allclose(np.asarray(jax.grad(fn)(sj)), expected, atol=1e-5)


@pytest.mark.parametrize("name,oracle", [("infonce", infonce_np), ("nwj", nwj_np),
                                         ("dv", dv_np)])
def test_plain_estimator_gradients_match_numeric(name, oracle):
  s = score_matrices()[1] / 3.0
  grad = jax.grad(lambda a: mi.objective(name, a)[0])(jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(np.asarray(grad), numeric_grad(oracle, s), atol=1e-5)


def test_mine_value_is_dv_and_gradient_uses_debiased_moving_average():
  rng = np.random.default_rng(1)
  state, ema = mi.mine_init(), 0.0
  k = 6
  off = ~np.eye(k, dtype=bool)
  value_grad_state = jax.jit(lambda a, st: (jax.value_and_grad(
      lambda b: mi.mine(b, st, decay=0.9)[0])(a), mi.mine(a, st, decay=0.9)[1]))
  for t in range(1, 5):
    s = rng.normal(size=(k, k)) + t * np.eye(k)
    (value, grad_state), state = value_grad_state(jnp.asarray(s, jnp.float32), state)
    m = np.mean(np.exp(s[off]))
    ema = 0.9 * ema + 0.1 * m
    ema_hat = ema / (1 - 0.9**t)
    expected = np.eye(k) / k - np.where(off, np.exp(s), 0.0) / (k * (k - 1)) / ema_hat
    np.testing.assert_allclose(float(value), dv_np(s), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_state), expected, rtol=1e-4, atol=1e-6)
    if t == 1:  # the first step is plain DV
      np.testing.assert_allclose(np.asarray(grad_state), numeric_grad(dv_np, s), atol=1e-5)
    assert int(state.count) == t


def test_mine_decay_zero_is_dv_gradient():
  s = score_matrices()[1]
  sj = jnp.asarray(s, jnp.float32)
  grad = jax.grad(lambda a: mi.mine(a, mi.mine_init(), decay=0.0)[0])(sj)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.grad(mi.dv)(sj)), atol=1e-6)


def test_estimators_are_finite_under_jit_for_extreme_scores():
  names = ("infonce", "dv", "js", "smile-1", "smile-5", "smile-inf", "mine")

  @jax.jit
  def values_and_grads(a):
    return {n: jax.value_and_grad(lambda b, n=n: mi.objective(n, b, mi.mine_init())[0])(a)
            for n in names}

  for name, (value, grad) in values_and_grads(jnp.asarray(score_matrices()[3])).items():
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad))), name


_jit_infonce = jax.jit(mi.infonce)


@hypothesis.settings(max_examples=80, deadline=None)
@hypothesis.given(hnp.arrays(np.float32, st.sampled_from([(2, 2), (5, 5), (12, 12)]),
                             elements=st.floats(-1e3, 1e3, width=32)))
def test_infonce_never_exceeds_log_k(scores):
  k = scores.shape[0]
  assert float(_jit_infonce(jnp.asarray(scores))) <= math.log(k) + 1e-5


def test_bad_scores_and_names_raise_naming_the_argument():
  with pytest.raises(ValueError, match="scores"):
    mi.infonce(jnp.zeros((3, 4)))
  with pytest.raises(ValueError, match="scores"):
    mi.dv(jnp.zeros((1, 1)))
  with pytest.raises(ValueError, match="scores"):
    mi.nwj(jnp.zeros(4))
  with pytest.raises(TypeError, match="scores"):
    mi.infonce(jnp.zeros((3, 3), jnp.int32))
  with pytest.raises(ValueError, match="tau"):
    mi.smile(jnp.zeros((3, 3)), 0.0)
  with pytest.raises(ValueError, match="decay"):
    mi.mine(jnp.zeros((3, 3)), mi.mine_init(), decay=1.0)
  with pytest.raises(ValueError, match="estimator"):
    mi.objective("mi", jnp.zeros((3, 3)))
  with pytest.raises(ValueError, match="mine_init"):
    mi.objective("mine", jnp.zeros((3, 3)))
