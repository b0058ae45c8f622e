"""Property-based fuzzing (hypothesis) of what tests/test_loss_properties.py does not cover.

That file fuzzes the dense InfoNCE family, the uniform / HCL / α-direct weightings, α-CL,
CURL and Barlow Twins. Here:

1. OT negative weightings (`on_views(weights.ot)` for every marginal type, gradient mode and cost;
   `on_views(weights.quadratic_ot)`) and the HCL-OT loss built on them: finite, non-negative,
   row-stochastic weights with exact zeros on self/positive pairs, finite loss and gradients
   (also through the Sinkhorn solution, implicit or unrolled), for embeddings with zero rows,
   duplicate rows and magnitudes from 1e-30 to 3e38, at epsilon from 1e-3 to 10 and gamma
   from 1e-3 to 10.
2. The tiled (streaming) InfoNCE at temperatures 0.01 to 10: finite value and gradient.
3. Every MI estimator of `contrax.mi` (all of `ESTIMATORS`, plus `js_fgan` and
   `smile_estimate`): finite value and gradient for critic scores |S| <= 80; the
   log-sum-exp estimators (InfoNCE, DV, MINE, SMILE) up to |S| = 1e30. NWJ (and JS's NWJ
   readout) contain `e^S`, which overflows float32 beyond S ~ 88.7, where the exact bound
   itself is below -3.4e38: up to |S| = 3e37 its value and gradient are the float64 ones
   rounded (-inf where below the float32 range, never NaN).
4. Bad hyper-parameters (drawn by hypothesis) raise ValueError / TypeError naming them.
5. CURL losses (logistic and hinge, plain and block tuples) on raw features from 1e-30 to
   3e38, where inner products overflow float32 beyond ~1e19: the value is the float64 one
   rounded (+inf where the sum of the tuples' losses is beyond the float32 range, never
   NaN), the gradients finite.

Defects hypothesis found are kept as regression tests next to the property they broke: the
implicit Sinkhorn gradient raised a lineax error when two embeddings coincided (ott's linear
solve had no ridge), and at epsilon <= 3e-3 a row of OT weights was all zero with a NaN
HCL-OT gradient (excluded pairs cost too little; rows were normalised after underflow).

Jitted closures take epsilon / gamma as traced arguments (`contrax.ot` allows that), so each
configuration compiles once and the examples reuse it; `derandomize=True` makes CI
reproducible.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import embeddings

from contrax import mi, weights
from contrax import ot as ot_lib
from contrax.losses import curl, infonce
from oracles import on_views

B, D, K = 3, 4, 4
SETTINGS = settings(max_examples=10, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
log_uniform = lambda low, high: st.floats(math.log10(low), math.log10(high)).map(  # noqa: E731
    lambda e: float(10.0 ** e))


def views(z):
  return jnp.asarray(z[:B]), jnp.asarray(z[B:2 * B])


def finite(x) -> bool:
  return bool(np.all(np.isfinite(np.asarray(x))))


def excluded_mask() -> np.ndarray:
  """Self and positive entries of the stacked `[2B, 2B]` layout."""
  i = np.arange(2 * B)
  mask = np.zeros((2 * B, 2 * B), bool)
  mask[i, i] = True
  mask[i, (i + B) % (2 * B)] = True
  return mask


def assert_negative_weights(w):
  """Finite, non-negative, zero on self/positive pairs, rows summing to 1 (also when the
  solver has not converged)."""
  w = np.asarray(w)
  assert w.shape == (2 * B, 2 * B) and finite(w) and np.all(w >= 0), w
  assert np.all(w[excluded_mask()] == 0.0), w
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- 1. OT weights

OT_CONFIGS = [  # (marginals, gradient, cost): every marginal, gradient mode and cost
    ("balanced", "stop", "sqeuclidean"),
    ("balanced", "unroll", "sqeuclidean"),
    ("balanced", "implicit", "sqeuclidean"),
    ("semi_relaxed", "stop", "sqeuclidean"),
    ("unbalanced", "stop", "sqeuclidean"),
    ("balanced", "stop", "exp"),
]
PROBE = jnp.asarray(np.random.default_rng(0).normal(size=(2 * B, 2 * B)), jnp.float32)


@functools.lru_cache(maxsize=None)
def ot_functions(marginals: str, gradient: str, cost: str, num_iterations: int = 10):
  """Jitted (weights, HCL-OT loss and its gradient, probe gradient through the weights)."""
  weigh = functools.partial(on_views(weights.ot), marginals=marginals, gradient=gradient,
                            cost=cost, num_iterations=num_iterations)

  def hcl_ot_loss(z1, z2, epsilon):
    w = jax.lax.stop_gradient(weigh(z1, z2, epsilon=epsilon))
    return infonce(z1, z2, temperature=0.5, tau_plus=0.1, weights=w)

  probe_loss = lambda z1, z2, epsilon: jnp.sum(weigh(z1, z2, epsilon=epsilon) * PROBE)  # noqa
  return (jax.jit(lambda z1, z2, epsilon: weigh(z1, z2, epsilon=epsilon)),
          jax.jit(jax.value_and_grad(hcl_ot_loss, argnums=(0, 1))),
          jax.jit(jax.grad(probe_loss, argnums=(0, 1))) if gradient != "stop" else None)


@pytest.mark.parametrize("marginals,gradient,cost", OT_CONFIGS)
@SETTINGS
@given(z=embeddings(2 * B, D), epsilon=log_uniform(1e-3, 10.0))
def test_ot_weights_and_hcl_ot_loss_are_finite(marginals, gradient, cost, z, epsilon):
  weights, loss_and_grad, probe_grad = ot_functions(marginals, gradient, cost)
  z1, z2 = views(z)
  assert_negative_weights(weights(z1, z2, epsilon))
  loss, grads = loss_and_grad(z1, z2, epsilon)
  assert finite(loss) and all(finite(g) for g in grads), (loss, grads)
  if probe_grad is not None:  # gradients through the Sinkhorn solution
    grads = probe_grad(z1, z2, epsilon)
    assert all(finite(g) for g in grads), grads


@pytest.mark.parametrize("epsilon", [1.0, 0.1, 1e-3])
def test_implicit_ot_gradient_with_a_duplicate_embedding(epsilon):
  """Found by test_ot_weights_and_hcl_ot_loss_are_finite: ott's `ImplicitDiff` ran lineax CG on
  the normal equations without a ridge, and the backward pass raised 'A linear solver returned
  non-finite output' (its accuracy against the float64 oracle: tests/test_ot.py)."""
  z = np.random.default_rng(1).normal(size=(2 * B, D)).astype(np.float32)
  z[2] = z[0]  # two images of the batch with one embedding (a duplicate image, a collapse)
  _, _, probe_grad = ot_functions("balanced", "implicit", "sqeuclidean")
  assert all(finite(g) for g in probe_grad(*views(z), epsilon))


@functools.lru_cache(maxsize=None)
def quadratic_functions():
  weigh = lambda z1, z2, gamma: on_views(weights.quadratic_ot)(  # noqa: E731
      z1, z2, gamma=gamma, num_iterations=20)

  def loss(z1, z2, gamma):
    return infonce(z1, z2, temperature=0.5, weights=weigh(z1, z2, gamma))
  return jax.jit(weigh), jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@SETTINGS
@given(z=embeddings(2 * B, D), gamma=log_uniform(1e-3, 10.0))
def test_quadratic_ot_weights_are_finite(z, gamma):
  weights, loss_and_grad = quadratic_functions()
  z1, z2 = views(z)
  w = np.asarray(weights(z1, z2, gamma))
  assert_negative_weights(w)
  loss, grads = loss_and_grad(z1, z2, gamma)
  assert finite(loss) and all(finite(g) for g in grads), (loss, grads)


def test_ot_weights_of_a_collapsed_batch_at_small_epsilon():
  """Five collapsed embeddings (zero vectors) and one other, found by hypothesis: the marginal
  constraints and the symmetry force every admissible entry of the coupling to 1/(2B N), i.e.
  every weight to 1/N = 1/4, at every epsilon. With excluded pairs costing only
  `max C + 100 eps`, the solver routed mass through them at epsilon <= 1e-2: a row of zero
  weights (the anchor got no negatives) and NaN HCL-OT gradients."""
  z = np.zeros((2 * B, D), np.float32)
  z[-1, -1] = 0.3
  expected = ~excluded_mask() / (2.0 * B - 2.0)
  for num_iterations in (10, 50):
    weights, loss_and_grad, _ = ot_functions("balanced", "stop", "sqeuclidean", num_iterations)
    np.testing.assert_allclose(np.asarray(weights(*views(z), 1e-3)), expected, atol=1e-4)
    loss, grads = loss_and_grad(*views(z), 1e-3)
    assert finite(loss) and all(finite(g) for g in grads), (loss, grads)


# ----------------------------------------------------------------------------- 2. tiled InfoNCE

TEMPERATURES = (0.01, 0.1, 1.0, 10.0)  # static under jit: one compilation each


@functools.lru_cache(maxsize=None)
def tiled_loss(temperature: float, tau_plus: float, decoupled: bool):
  f = lambda z1, z2: infonce(z1, z2, temperature=temperature, tau_plus=tau_plus,  # noqa
                             decoupled=decoupled, implementation="tiled", tile_size=4)
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))


@SETTINGS
@given(z=embeddings(2 * B, D), t=st.sampled_from(TEMPERATURES), tau=st.sampled_from((0.0, 0.1)),
       decoupled=st.booleans())
def test_tiled_infonce_is_finite(z, t, tau, decoupled):
  value, grads = tiled_loss(t, tau, decoupled)(*views(z))
  assert finite(value) and all(finite(g) for g in grads), (value, grads)


# ----------------------------------------------------------------------------- 3. MI estimators


def mi_functions():
  """name -> (scores -> scalar): every estimator of `contrax.mi`."""
  functions = {name: (lambda s, name=name: mi.objective(name, s, mi.mine_init())[0])
               for name in mi.ESTIMATORS}
  functions["js_fgan"] = mi.js_fgan
  functions["smile_estimate(tau=2)"] = lambda s: mi.smile_estimate(s, 2.0)
  return functions


LSE_ESTIMATORS = ("infonce", "dv", "mine", "smile-1", "smile-5", "smile-inf", "js_fgan",
                  "smile_estimate(tau=2)")


@st.composite
def scores(draw, max_exponent: int, cap: float = math.inf):
  """`[K, K]` critic scores of magnitudes 10^e (e <= max_exponent), capped at `cap`, with
  some equal rows and zero entries."""
  s = embeddings(K, K, max_exponent=max_exponent)
  s = np.clip(draw(s), -cap, cap)
  return jnp.asarray(s)


@functools.lru_cache(maxsize=None)
def mi_value_and_grad(name: str):
  return jax.jit(jax.value_and_grad(mi_functions()[name]))


@SETTINGS
@given(s=scores(max_exponent=3, cap=80.0))
def test_every_mi_estimator_is_finite_for_moderate_scores(s):
  for name in mi_functions():
    value, grad = mi_value_and_grad(name)(s)
    assert finite(value) and finite(grad), (name, s, value, grad)
  assert float(mi.infonce(s)) <= math.log(K) + 1e-5  # the InfoNCE bound
  surrogate, state = mi.mine(s, mi.mine_init())
  surrogate, state = mi.mine(s * 0.5, state)  # the moving average threaded on
  assert finite(surrogate) and finite(state.log_ema)


@SETTINGS
@given(s=scores(max_exponent=30))
def test_log_sum_exp_estimators_are_finite_for_huge_scores(s):
  for name in LSE_ESTIMATORS:
    value, grad = mi_value_and_grad(name)(s)
    assert finite(value) and finite(grad), (name, s, value, grad)


def nwj_value_and_grad_np(s: np.ndarray):
  """float64 NWJ `mean_i S_ii - e^-1 mean_{i!=j} e^S_ij` and its gradient: 1/K on the
  diagonal, `-e^(S_ij - 1) / (K(K-1))` off it."""
  k = s.shape[0]
  off = ~np.eye(k, dtype=bool)
  with np.errstate(over="ignore"):
    off_grad = np.where(off, -np.exp(np.where(off, s, 0.0) - 1.0) / (k * (k - 1)), 0.0)
  return np.mean(np.diag(s)) + np.sum(off_grad), np.eye(k) / k + off_grad


def assert_float32_rounding_of(got, want, rtol=2e-5):
  """`got` (float32) is `want` (float64) rounded: close where `want` is well inside the float32
  range, -inf where it is well below it, never NaN."""
  got, want = np.atleast_1d(np.asarray(got, np.float64)), np.atleast_1d(want)
  big = float(np.finfo(np.float32).max)
  assert not np.any(np.isnan(got)), got
  inside = np.abs(want) < big / 2
  np.testing.assert_allclose(got[inside], want[inside], rtol=rtol, atol=1e-6)
  assert np.all(got[want < -2 * big] == -np.inf), (got, want)


@SETTINGS
@given(s=scores(max_exponent=38))
def test_nwj_is_its_float64_value_rounded_never_nan(s):
  """Found by hypothesis: NWJ's gradient was `e^(logmeanexp - 1) * softmax`, which is
  `inf * 0 = NaN` on the other scores once one off-diagonal score passes ~89. Now each score's
  gradient is its own exponential: finite where representable, -inf beyond, as the value."""
  value, grad = mi_value_and_grad("nwj")(s)
  s64 = np.asarray(s, np.float64)
  want_value, want_grad = nwj_value_and_grad_np(s64)
  # Cancellation between the two terms: tolerance relative to their magnitudes.
  scale = np.mean(np.abs(np.diag(s64))) + abs(want_value - np.mean(np.diag(s64)))
  if scale < float(np.finfo(np.float32).max) / 2:
    assert abs(float(value) - want_value) <= 2e-5 * scale + 1e-6, (float(value), want_value)
  else:
    assert_float32_rounding_of(value, want_value)
  assert_float32_rounding_of(grad, want_grad)
  js_value, js_grad = mi_value_and_grad("js")(s - 1.0)  # NWJ readout, f-GAN JS gradient
  assert not math.isnan(float(js_value)) and finite(js_grad)


# ----------------------------------------------------------------------------- 4. bad arguments

not_positive = st.one_of(st.floats(max_value=0.0, allow_nan=False),
                         st.sampled_from([float("nan"), float("inf")]))
not_a_choice = st.text(min_size=1, max_size=8).filter(
    lambda s: s not in ot_lib.MARGINALS + ot_lib.COSTS + ot_lib.GRADIENTS + mi.ESTIMATORS)
Z = jnp.ones((B, D))


@SETTINGS
@given(bad=not_positive, count=st.integers(-3, 0), name=not_a_choice)
def test_bad_ot_arguments_raise_naming_them(bad, count, name):
  with pytest.raises(ValueError, match="epsilon"):
    on_views(weights.ot)(Z, Z, epsilon=bad)
  with pytest.raises(ValueError, match="gamma"):
    on_views(weights.quadratic_ot)(Z, Z, gamma=bad)
  with pytest.raises(ValueError, match="num_iterations"):
    on_views(weights.ot)(Z, Z, epsilon=0.1, num_iterations=count)
  for argument in ("marginals", "gradient", "cost"):
    with pytest.raises(ValueError, match=f"unknown {argument} .*valid choices"):
      on_views(weights.ot)(Z, Z, epsilon=0.1, **{argument: name})
  with pytest.raises(ValueError, match="at least 2 images"):
    on_views(weights.ot)(Z[:1], Z[:1], epsilon=0.1)
  with pytest.raises(ValueError, match="z1"):
    on_views(weights.ot)(Z, jnp.ones((B + 1, D)), epsilon=0.1)


@SETTINGS
@given(bad=not_positive, decay=st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0)),
       name=not_a_choice, k=st.integers(2, 5))
def test_bad_mi_arguments_raise_naming_them(bad, decay, name, k):
  s = jnp.zeros((k, k))
  with pytest.raises(ValueError, match="tau"):
    mi.smile(s, bad if not (bad == math.inf) else -1.0)  # inf is valid: no clipping
  with pytest.raises(ValueError, match="decay"):
    mi.mine(s, mi.mine_init(), decay=decay)
  with pytest.raises(ValueError, match="unknown estimator .*valid choices"):
    mi.objective(name, s)
  with pytest.raises(ValueError, match="scores"):
    mi.dv(jnp.zeros((k, k + 1)))
  with pytest.raises(ValueError, match="scores"):
    mi.infonce(jnp.zeros((1, 1)))
  with pytest.raises(ValueError, match="scores"):
    mi.nwj(jnp.zeros((k, k, 1)))
  with pytest.raises(TypeError, match="scores"):
    mi.dv(jnp.zeros((k, k), jnp.int32))
  with pytest.raises(ValueError, match="state"):
    mi.objective("mine", s)


# ----------------------------------------------------------------------------- 5. CURL


@functools.lru_cache(maxsize=None)
def curl_value_and_grad(loss: str, base: float):
  f = lambda fx, fp, fn: curl.curl_loss(fx, fp, fn, loss=loss, base=base)  # noqa: E731
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))


def curl_np(fx, fx_pos, fx_neg, loss, base):
  """float64 per-tuple CURL losses of `v_mi = fxᵀ (fx⁺ - fx⁻_i)` and their rounding scale:
  the mean over tuples of `sum_j |fx_j| max_i |fx⁺_j - fx⁻_ij|` (a bound on |v|), divided by
  ln b for the logistic loss."""
  w = fx_pos[:, None, :] - fx_neg
  v = np.einsum("md,mkd->mk", fx, w)
  bound = np.mean(np.sum(np.abs(fx) * np.max(np.abs(w), axis=1), axis=1))
  if loss == "hinge":
    return np.maximum(0.0, 1.0 - v.min(axis=1)), bound
  lse = np.logaddexp.reduce(np.concatenate([np.zeros((v.shape[0], 1)), -v], axis=1), axis=1)
  return lse / math.log(base), bound / math.log(base)


@SETTINGS
@given(z=embeddings(B + B + B * 2 * 2, D),
       loss=st.sampled_from(["logistic", "hinge"]), base=st.sampled_from([1.5, 2.0, 10.0]),
       block=st.booleans())
def test_curl_losses_are_their_float64_values_rounded(z, loss, base, block):
  fx, fp = z[:B], z[B:2 * B]
  fn = z[2 * B:].reshape(B, 2, 2, D)
  if block:  # b = 2 samples per class: the positives and negatives are block means
    fp, fn = fn[:, 0], fn
    means = fp.astype(np.float64).mean(1), fn.astype(np.float64).mean(2)
  else:
    fn = fn[:, :, 0]
    means = fp.astype(np.float64), fn.astype(np.float64)
  value, grads = curl_value_and_grad(loss, base)(jnp.asarray(fx), jnp.asarray(fp),
                                                 jnp.asarray(fn))
  rows, bound = curl_np(fx.astype(np.float64), *means, loss, base)
  big = float(np.finfo(np.float32).max)
  assert not math.isnan(float(value)) and all(finite(g) for g in grads), (value, grads)
  if np.sum(rows) < big / 2:  # float32 rounds each score by ~d ulps of its bound
    want = np.mean(rows)
    assert abs(float(value) - want) <= 1e-5 * bound + 1e-6, (float(value), want, bound)
  elif np.sum(rows) > 2 * big:  # a tuple's loss, or the sum over tuples, beyond float32
    assert float(value) == math.inf, (float(value), rows)
