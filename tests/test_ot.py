"""Tests for contrax.ot and the OT weightings of contrax.weights (Jiang, Ishwar, Aeron 2023).

References are independent of the code under test: a float64 log-domain Sinkhorn–Knopp
written here from the formula, POT (`ot.sinkhorn`, `ot.smooth.smooth_ot_dual`), HCL's closed
form (`weights.hcl`), central finite differences of the float64 oracle, and KKT conditions.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from jax.sharding import Mesh, PartitionSpec as P
from scipy.special import logsumexp

import dataclasses

from contrax import ot, pairs, weights
from contrax.losses import infonce
from oracles import on_views

B, D = 6, 5  # 2B = 12 stacked rows, N = 10 negatives each
# Jitted entry points (eager op-by-op dispatch of the solvers is slow); epsilon is traced.
ot_weights = jax.jit(on_views(weights.ot), static_argnames=("marginals", "tau", "cost", "kappa",
                                                    "num_iterations", "gradient", "axis_name"))
hcl_weights = jax.jit(on_views(weights.hcl), static_argnames=("beta", "temperature"))


def views(seed=0, b=B, d=D):
  rng = np.random.RandomState(seed)
  return (jnp.asarray(rng.randn(b, d), jnp.float32), jnp.asarray(rng.randn(b, d), jnp.float32))


def oracle_cost_and_mask(z1, z2):
  """float64 stacked cost ||z_i - z_j||^2 on unit rows, and the negatives mask."""
  z = np.concatenate([np.asarray(z1, np.float64), np.asarray(z2, np.float64)])
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n, b = z.shape[0], z.shape[0] // 2
  cost = np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
  idx = np.arange(n)
  mask = (idx[None, :] != idx[:, None]) & (idx[None, :] != (idx[:, None] + b) % n)
  return cost, mask


def oracle_sinkhorn(cost, mask, epsilon, a=None, b=None, iterations=20000):
  """float64 log-domain Sinkhorn–Knopp; excluded pairs have zero kernel entries."""
  n, m = cost.shape
  a = np.full(n, 1.0 / n) if a is None else a
  b = np.full(m, 1.0 / m) if b is None else b
  log_k = np.where(mask, -cost / epsilon, -np.inf)
  f, g = np.zeros(n), np.zeros(m)
  for _ in range(iterations):
    g = np.log(b) - logsumexp(log_k + f[:, None], axis=0)
    f = np.log(a) - logsumexp(log_k + g[None, :], axis=1)
    if np.abs(np.exp(log_k + f[:, None] + g[None, :]).sum(0) - b).sum() < 1e-15:
      break
  return np.exp(log_k + f[:, None] + g[None, :])


def oracle_weights(z1, z2, epsilon):
  cost, mask = oracle_cost_and_mask(z1, z2)
  pi = oracle_sinkhorn(cost, mask, epsilon)
  return pi / pi.sum(1, keepdims=True)


def coupling(z1, z2, axis_name=None, **kwargs):
  """`ot.batch_coupling` of views; an `axis_name` is only recorded (for argument checks)."""
  geometry = dataclasses.replace(pairs.build(z1, z2), axis_name=axis_name)
  return ot.batch_coupling(geometry, **kwargs)


@functools.partial(jax.jit, static_argnames=("num_iterations", "cost"))
def solve_weights(z1, z2, epsilon, num_iterations=500, cost="sqeuclidean"):
  c = coupling(z1, z2, epsilon=epsilon, num_iterations=num_iterations, cost=cost)
  return c.weights, c.diagnostics


def test_balanced_weights_equal_float64_sinkhorn_oracle():
  z1, z2 = views(1)
  for epsilon in (0.2, 1.0):
    w, diag = solve_weights(z1, z2, jnp.float32(epsilon))
    # float32 weights are <= 1; 1e-6 absolute is ~10 ulps of the largest weight.
    np.testing.assert_allclose(np.asarray(w), oracle_weights(z1, z2, epsilon), atol=1e-6, rtol=0)
    assert bool(diag.converged) and float(diag.column_marginal_error) < 1e-5


def test_entropic_coupling_equals_pot_sinkhorn_with_unequal_marginals():
  rng = np.random.RandomState(3)
  cost = rng.rand(7, 9)
  a, b = rng.rand(7) + 0.5, rng.rand(9) + 0.5
  a, b = a / a.sum(), b / b.sum()
  expected = pot.sinkhorn(a, b, cost, 0.3, method="sinkhorn_log", numItermax=100000,
                          stopThr=1e-13)
  solve = jax.jit(functools.partial(ot.entropic_coupling, epsilon=0.3, num_iterations=1000))
  pi, _ = solve(*(jnp.asarray(x, jnp.float32) for x in (cost, a, b)))
  # Entries are ~1/63; 1e-7 absolute is float32 rounding of the potentials.
  np.testing.assert_allclose(np.asarray(pi), expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("marginals", ["balanced", "semi_relaxed", "unbalanced"])
@pytest.mark.parametrize("cost", ["sqeuclidean", "exp"])
def test_weights_rows_sum_to_one_and_excluded_pairs_are_exactly_zero(marginals, cost):
  z1, z2 = views(2)
  w = np.asarray(ot_weights(z1, z2, epsilon=0.5, marginals=marginals, cost=cost,
                            num_iterations=20))
  _, mask = oracle_cost_and_mask(z1, z2)
  assert np.all(w[~mask] == 0.0)
  assert np.all(w[mask] > 0.0)
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("epsilon,temperature", [(0.05, 0.5), (0.7, 0.5), (3.0, 0.2)])
def test_semi_relaxed_coupling_equals_hcl_with_beta_2t_over_eps(epsilon, temperature):
  z1, z2 = views(4)
  beta = 2 * temperature / epsilon
  with jax.enable_x64(True):
    a, b = (jnp.asarray(z, jnp.float64) for z in (z1, z2))
    w = ot_weights(a, b, epsilon=epsilon, marginals="semi_relaxed")
    expected = hcl_weights(a, b, beta=beta, temperature=temperature)
    assert w.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(w), np.asarray(expected), atol=1e-12, rtol=0)
  # float32: the two routes round exponents of size up to 2/eps differently, each by a few
  # ulps, so the weights (<= 1) agree to about 4 * 2^-23 * (1 + 2/eps).
  w32 = ot_weights(z1, z2, epsilon=epsilon, marginals="semi_relaxed")
  expected32 = hcl_weights(z1, z2, beta=beta, temperature=temperature)
  np.testing.assert_allclose(np.asarray(w32), np.asarray(expected32), rtol=0,
                             atol=4 * np.finfo(np.float32).eps * (1 + 2 / epsilon))


def test_weights_tend_to_uniform_as_epsilon_grows():
  z1, z2 = views(5)
  _, mask = oracle_cost_and_mask(z1, z2)
  uniform = mask / mask.sum(1, keepdims=True)
  gaps = [np.abs(np.asarray(solve_weights(z1, z2, jnp.float32(eps))[0]) - uniform).max()
          for eps in (0.1, 1.0, 10.0, 1e5)]
  assert all(later < earlier for earlier, later in zip(gaps, gaps[1:])), gaps
  assert gaps[-1] < 1e-4


def weighted_sum(z1, z2, probe, gradient, num_iterations=300, marginals="balanced"):
  w = on_views(weights.ot)(z1, z2, epsilon=0.5, gradient=gradient, num_iterations=num_iterations,
                   marginals=marginals)
  return jnp.sum(probe * w)


def test_implicit_and_unrolled_gradients_agree_and_match_finite_differences():
  z1, z2 = views(6, b=4, d=3)
  rng = np.random.RandomState(7)
  probe = jnp.asarray(rng.randn(8, 8), jnp.float32)
  grads = {mode: jax.jit(jax.grad(functools.partial(weighted_sum, gradient=mode, probe=probe),
                                  argnums=(0, 1)))(z1, z2) for mode in ("implicit", "unroll")}
  flat = {k: np.concatenate([np.ravel(g) for g in v]) for k, v in grads.items()}
  rel = np.linalg.norm(flat["implicit"] - flat["unroll"]) / np.linalg.norm(flat["unroll"])
  assert rel <= 1e-4, rel
  # Directional derivative of the float64 oracle by central differences.
  d1, d2 = rng.randn(4, 3), rng.randn(4, 3)
  step = 1e-5
  probe64 = np.asarray(probe, np.float64)
  value = lambda s: np.sum(probe64 * oracle_weights(np.asarray(z1, np.float64) + s * d1,
                                                    np.asarray(z2, np.float64) + s * d2, 0.5))
  fd = (value(step) - value(-step)) / (2 * step)
  for mode, (g1, g2) in grads.items():
    directional = float(np.sum(np.asarray(g1) * d1) + np.sum(np.asarray(g2) * d2))
    assert abs(directional - fd) <= 1e-3 * abs(fd), (mode, directional, fd)


@pytest.mark.parametrize("epsilon", [0.5, 0.1])
def test_implicit_gradient_with_a_duplicate_embedding_matches_unroll_and_finite_differences(
    epsilon):
  """Two coinciding embeddings (and eps = 0.1) made ott's unridged CG solve raise 'A linear
  solver returned non-finite output'; the ridged LU solve gives the converged gradient."""
  z1, z2 = views(8, b=4, d=3)
  z1 = z1.at[2].set(z1[0])
  rng = np.random.RandomState(9)
  probe = jnp.asarray(rng.randn(8, 8), jnp.float32)

  def probe_sum(a, b, eps, gradient):
    w = on_views(weights.ot)(a, b, epsilon=eps, gradient=gradient, num_iterations=2000)
    return jnp.sum(probe * w)

  grads = {mode: jax.jit(jax.grad(functools.partial(probe_sum, gradient=mode), argnums=(0, 1)))(
      z1, z2, epsilon) for mode in ("implicit", "unroll")}
  d1, d2 = rng.randn(4, 3), rng.randn(4, 3)
  d1[2] = d1[0]  # keep the duplicate a duplicate
  step = 1e-5
  probe64 = np.asarray(probe, np.float64)
  value = lambda s: np.sum(probe64 * oracle_weights(np.asarray(z1, np.float64) + s * d1,
                                                    np.asarray(z2, np.float64) + s * d2,
                                                    epsilon))
  fd = (value(step) - value(-step)) / (2 * step)
  for mode, (g1, g2) in grads.items():
    assert np.all(np.isfinite(np.asarray(g1))) and np.all(np.isfinite(np.asarray(g2))), mode
    directional = float(np.sum(np.asarray(g1) * d1) + np.sum(np.asarray(g2) * d2))
    assert abs(directional - fd) <= 1e-3 * abs(fd), (mode, directional, fd)


def test_weights_equal_the_oracle_when_embeddings_nearly_collapse():
  """Seven nearly parallel embeddings and one orthogonal to them: with excluded pairs costing
  only `max C + 100 eps`, the solver routed mass through them (zeroed afterwards) and the
  weights were off by up to 0.65 at eps = 0.01 and 0.91 at eps = 3e-3."""
  rng = np.random.default_rng(0)
  z = np.zeros((8, 3))
  z[:, 0] = 1.0
  z[:-1] += 0.05 * rng.normal(size=(7, 3))
  z[-1] = [0.0, 1.0, 0.0]
  z1, z2 = jnp.asarray(z[:4], jnp.float32), jnp.asarray(z[4:], jnp.float32)
  for epsilon in (0.01, 3e-3):
    w, diag = solve_weights(z1, z2, jnp.float32(epsilon), num_iterations=1000)
    np.testing.assert_allclose(np.asarray(w), oracle_weights(z1, z2, epsilon), atol=1e-4, rtol=0)
    assert bool(diag.converged)


def test_row_normalised_weights_survive_a_row_of_underflowing_coupling():
  """`pi_ij = exp((f_i + g_j - C_ij)/eps)` with a row whose every entry underflows float32
  (exponents near -200): normalising pi would give a zero row; the log-space softmax gives the
  float64 `pi / rowsum(pi)`."""
  rng = np.random.default_rng(3)
  cost = rng.uniform(0.0, 4.0, size=(6, 6))
  mask = rng.uniform(size=(6, 6)) < 0.7
  mask[np.arange(6), rng.integers(0, 6, 6)] = True  # every row keeps an entry
  f, g, epsilon = np.zeros(6), rng.normal(scale=0.01, size=6), 0.02
  f[2] = -4.0  # row 2: exponents (f + g - C)/eps <= -200
  pi = np.where(mask, np.exp((f[:, None] + g[None, :] - cost) / epsilon), 0.0)
  assert np.all(np.exp(np.float32(((f[:, None] + g[None, :] - cost) / epsilon)[2])) == 0.0)
  w = ot.row_normalised_weights(jnp.asarray(cost, jnp.float32), jnp.asarray(g, jnp.float32),
                                epsilon, jnp.asarray(mask))
  # Exponents of size C/eps <= 200 carry ~200 * 2^-24 relative rounding in float32.
  np.testing.assert_allclose(np.asarray(w), pi / pi.sum(1, keepdims=True), atol=3e-5, rtol=0)


def test_semi_relaxed_gradient_equals_hcl_gradient():
  z1, z2 = views(8, b=4, d=3)
  probe = jnp.asarray(np.random.RandomState(9).randn(8, 8), jnp.float32)
  got = jax.jit(jax.grad(functools.partial(weighted_sum, gradient="implicit", probe=probe,
                                           marginals="semi_relaxed")))(z1, z2)
  hcl_sum = lambda a, b: jnp.sum(probe * on_views(weights.hcl)(a, b, beta=2 * 0.5 / 0.5,
                                                             temperature=0.5))
  np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(jax.grad(hcl_sum))(z1, z2)),
                             atol=1e-5)


def test_stop_mode_has_zero_gradient_through_the_weights():
  z1, z2 = views(10)
  probe = jnp.asarray(np.random.RandomState(11).randn(12, 12), jnp.float32)
  g1, g2 = jax.jit(jax.grad(functools.partial(weighted_sum, gradient="stop", probe=probe,
                                              num_iterations=10), argnums=(0, 1)))(z1, z2)
  assert np.all(np.asarray(g1) == 0.0) and np.all(np.asarray(g2) == 0.0)


@pytest.mark.parametrize("cost", ["sqeuclidean", "exp"])
def test_float32_is_finite_from_eps_005_to_10_and_reports_marginal_error(cost):
  z1, z2 = views(12, b=16, d=8)
  for eps in (0.05, 0.3, 1.0, 10.0):
    w, diag = solve_weights(z1, z2, jnp.float32(eps), num_iterations=100, cost=cost)
    assert np.all(np.isfinite(np.asarray(w)))
    errors = np.asarray([diag.row_marginal_error, diag.column_marginal_error])
    assert np.all(np.isfinite(errors)) and errors[0] < 1e-5
    np.testing.assert_allclose(np.asarray(w).sum(1), 1.0, atol=1e-5)


def test_jitted_coupling_traces_once_across_calls():
  traces = []

  @jax.jit
  def step(a, b):
    traces.append(1)
    return coupling(a, b, epsilon=0.7, num_iterations=30)

  for seed in range(3):
    jax.block_until_ready(step(*views(seed)))
  assert len(traces) == 1


def test_sharded_weights_loss_and_gradients_equal_single_device():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  n_dev = len(jax.devices())
  z1, z2 = views(13, b=2 * n_dev, d=4)

  def loss(a, b, axis_name=None):
    w = on_views(weights.ot)(a, b, epsilon=0.5, num_iterations=30, axis_name=axis_name)
    return infonce(a, b, weights=w, tau_plus=0.05, axis_name=axis_name), w

  value_and_grad = lambda axis_name: jax.value_and_grad(
      functools.partial(loss, axis_name=axis_name), argnums=(0, 1), has_aux=True)
  sharded = jax.jit(jax.shard_map(value_and_grad("data"), mesh=mesh,
                                  in_specs=(P("data"), P("data")),
                                  out_specs=((P(), P("data")), (P("data"), P("data")))))
  ((value, w), grads), ((value1, w1), grads1) = sharded(z1, z2), jax.jit(value_and_grad(None))(z1, z2)
  # Each device returns [its z1 rows; its z2 rows]; restore the single-device row order.
  rows = np.asarray(w).reshape(n_dev, 2, 2, -1).transpose(1, 0, 2, 3).reshape(4 * n_dev, -1)
  np.testing.assert_allclose(rows, np.asarray(w1), atol=1e-6)
  np.testing.assert_allclose(float(value), float(value1), rtol=1e-6)
  for g, g1 in zip(grads, grads1):
    np.testing.assert_allclose(np.asarray(g), np.asarray(g1), atol=1e-6)


def test_hcl_ot_loss_with_large_epsilon_is_the_debiased_loss():
  z1, z2 = views(14)
  w = jax.lax.stop_gradient(ot_weights(z1, z2, epsilon=1e6, num_iterations=20))
  hcl_ot = infonce(z1, z2, weights=w, tau_plus=0.05)
  debiased = infonce(z1, z2, tau_plus=0.05)
  np.testing.assert_allclose(float(hcl_ot), float(debiased), rtol=1e-5)


# ---------------------------------------------------------------- quadratic regularisation


@functools.partial(jax.jit, static_argnames="num_iterations")
def solve_quadratic(cost, a, b, mask, gamma, num_iterations=200):
  return ot.quadratic_coupling(cost, a, b, gamma=gamma, num_iterations=num_iterations,
                               keep_mask=mask)


def quadratic_problem(seed=15):
  z1, z2 = views(seed)
  cost, mask = oracle_cost_and_mask(z1, z2)
  a = np.full(cost.shape[0], 1.0 / cost.shape[0])
  return cost, mask, a


@pytest.mark.parametrize("gamma", [0.5, 20.0, 500.0])
def test_quadratic_coupling_meets_marginals_kkt_and_pot(gamma):
  cost, mask, a = quadratic_problem()
  pi, diag = solve_quadratic(jnp.asarray(cost, jnp.float32), jnp.asarray(a, jnp.float32),
                             jnp.asarray(a, jnp.float32), jnp.asarray(mask), jnp.float32(gamma))
  pi, alpha, beta = (np.asarray(x, np.float64) for x in (pi, *diag.potentials))
  np.testing.assert_allclose(pi.sum(1), a, atol=1e-5)
  np.testing.assert_allclose(pi.sum(0), a, atol=1e-5)
  assert np.all(pi >= 0) and np.all(pi[~mask] == 0)
  slack = alpha[:, None] + beta[None, :] - cost
  support = pi > 0
  # Stationarity on the support, dual feasibility off it (scale: gamma * pi ~ gamma / n^2).
  tol = 1e-5 * max(1.0, gamma)
  np.testing.assert_allclose(slack[support], gamma * pi[support], atol=tol)
  assert np.all(slack[mask & ~support] <= tol)
  expected = pot.smooth.smooth_ot_dual(a, a, np.where(mask, cost, 1e3), gamma, reg_type="l2",
                                       stopThr=1e-14, numItermax=10000)
  np.testing.assert_allclose(pi, expected, atol=1e-5)


def test_quadratic_coupling_gets_sparser_as_gamma_shrinks():
  cost, mask, a = quadratic_problem(16)
  args = (jnp.asarray(cost, jnp.float32), jnp.asarray(a, jnp.float32),
          jnp.asarray(a, jnp.float32), jnp.asarray(mask))
  nonzero = [int(np.sum(np.asarray(solve_quadratic(*args, jnp.float32(g))[0]) > 0))
             for g in (1e4, 30.0, 0.3)]
  assert nonzero[0] == mask.sum() and nonzero[0] > nonzero[1] > nonzero[2] >= cost.shape[0], nonzero


def test_ot_quadratic_weights_are_row_stochastic_and_sparse():
  z1, z2 = views(17)
  w = np.asarray(jax.jit(on_views(weights.quadratic_ot), static_argnames="num_iterations")(
      z1, z2, gamma=0.01, num_iterations=100))
  _, mask = oracle_cost_and_mask(z1, z2)
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
  assert np.all(w[~mask] == 0) and np.sum(w[mask] == 0) > 0


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize("kwargs,match", [
    (dict(epsilon=0.0), "epsilon"),
    (dict(epsilon=0.5, marginals="partial"), "marginals"),
    (dict(epsilon=0.5, gradient="backprop"), "gradient"),
    (dict(epsilon=0.5, cost="cosine"), "cost"),
    (dict(epsilon=0.5, num_iterations=0), "num_iterations"),
    (dict(epsilon=0.5, marginals="unbalanced", tau=1.0), "tau"),
    (dict(epsilon=0.5, gradient="implicit", axis_name="data"), "implicit"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
  z1, z2 = views()
  with pytest.raises(ValueError, match=match):
    coupling(z1, z2, **kwargs)


def test_single_image_batch_is_rejected():
  z1, z2 = views(b=1)
  with pytest.raises(ValueError, match="at least 2 images"):
    on_views(weights.ot)(z1, z2, epsilon=0.5)
  with pytest.raises(ValueError, match="gamma"):
    on_views(weights.quadratic_ot)(*views(), gamma=-1.0)
