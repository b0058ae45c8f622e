"""Barlow Twins and the paper forms of Huang et al. (contrax.losses.barlow) against float64
NumPy oracles written from the formulas (Zbontar et al. 2021; Huang et al. 2023), with the
decomposition identities."""
from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from contrax.losses import barlow
from oracles import fd_grad, rel_err

B, D = 8, 4


def oracle_standardize(z, eps):
  z = z.astype(np.float64)
  centred = z - z.mean(0)
  return centred / np.sqrt((centred ** 2).mean(0) + eps)


def oracle_barlow(z1, z2, lambda_, eps):
  c = oracle_standardize(z1, eps).T @ oracle_standardize(z2, eps) / z1.shape[0]
  on = sum((1.0 - c[i, i]) ** 2 for i in range(c.shape[0]))
  off = sum(c[i, j] ** 2 for i in range(c.shape[0]) for j in range(c.shape[1]) if i != j)
  return on + lambda_ * off


def oracle_paper_infonce(f1, f2, fn):
  unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)
  f1, f2, fn = (unit(f.astype(np.float64)) for f in (f1, f2, fn))
  pos, neg = np.sum(f1 * f2, 1), np.sum(f1 * fn, 1)
  loss = -np.mean(np.log(np.exp(pos) / (np.exp(pos) + np.exp(neg))))
  l1 = 0.5 * np.mean(np.sum((f1 - f2) ** 2, 1)) - 1.0
  l2 = np.mean(np.log(np.exp(pos) + np.exp(neg)))
  return loss, l1, l2


def views(seed, noise=0.5, b=B):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(b, D)).astype(np.float32)
  return z1, (z1 @ rng.normal(size=(D, D)) * 0.3 + z1 + noise * rng.normal(size=(b, D))).astype(
      np.float32)


@pytest.mark.parametrize("lambda_,eps", [(5e-3, 1e-5), (0.5, 0.0), (1.0, 1e-3)])
def test_barlow_twins_value_and_gradient(lambda_, eps):
  z1, z2 = views(0)
  ours = lambda a, b: barlow.barlow_twins(a, b, lambda_=lambda_, eps=eps)
  oracle = lambda a, b: oracle_barlow(a, b, lambda_, eps)
  value, grads = jax.value_and_grad(ours, argnums=(0, 1))(z1, z2)
  np.testing.assert_allclose(float(value), oracle(z1, z2), rtol=1e-5)
  assert rel_err(grads, fd_grad(oracle, z1, z2)) < 1e-5


def test_views_are_standardised_separately():
  # Scaling one view per dimension does not change C (each view has its own statistics).
  z1, z2 = views(1)
  scaled = z2 * np.array([1.0, 10.0, 0.1, 3.0], np.float32) + 5.0
  np.testing.assert_allclose(float(barlow.barlow_twins(z1, z2, eps=0.0)),
                             float(barlow.barlow_twins(z1, scaled, eps=0.0)), rtol=1e-4)


def test_identical_views_give_zero_invariance_term():
  z1, _ = views(2)
  c = np.asarray(barlow.cross_correlation(z1, z1))
  np.testing.assert_allclose(np.diag(c), 1.0, rtol=1e-5)


def test_paper_infonce_decomposition():
  rng = np.random.default_rng(3)
  f1, f2, fn = (rng.normal(size=(B, D)).astype(np.float32) for _ in range(3))
  got = barlow.paper_infonce_one_negative(f1, f2, fn)
  want = oracle_paper_infonce(f1, f2, fn)
  np.testing.assert_allclose([float(x) for x in got], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(got.loss), float(got.l1 + got.l2), rtol=1e-6)


@pytest.mark.parametrize("lambda_", [0.0, 5e-3, 0.3, 1.0])
def test_identity_cross_correlation_decomposition(lambda_):
  """(e): L_CC = (1 - λ) L1 + λ L2 under the paper's normalisation (oracle-computed F)."""
  z1, z2 = views(4)
  f = oracle_standardize(z1, 0.0).T @ oracle_standardize(z2, 0.0) / B
  l1 = np.sum((1.0 - np.diag(f)) ** 2)
  l2 = np.sum((f - np.eye(D)) ** 2)
  got = barlow.cross_correlation_loss(z1, z2, lambda_)
  np.testing.assert_allclose(float(got.l1), l1, rtol=1e-5)
  np.testing.assert_allclose(float(got.l2), l2, rtol=1e-5)
  np.testing.assert_allclose(float(got.loss), (1 - lambda_) * l1 + lambda_ * l2, rtol=1e-5)
  np.testing.assert_allclose(float(got.loss), oracle_barlow(z1, z2, lambda_, 0.0), rtol=1e-5)
  np.testing.assert_allclose(float(barlow.barlow_twins(z1, z2, lambda_=lambda_, eps=0.0)),
                             float(got.loss), rtol=1e-5)


@pytest.mark.parametrize("noise", [0.01, 0.3, 3.0])
def test_identity_alignment_bound(noise):
  """(e): Lemma 4.1 of Huang et al. 2023, L_align <= 2 sqrt(d L1), on standardised features."""
  z1, z2 = views(5, noise=noise)
  f1, f2 = barlow.standardize(z1), barlow.standardize(z2)
  l_align = float(barlow.alignment(f1, f2))
  l1 = float(barlow.cross_correlation_loss(z1, z2, 0.0).l1)
  np.testing.assert_allclose(l_align, np.mean(np.sum((np.asarray(f1, np.float64)
                                                      - np.asarray(f2, np.float64)) ** 2, 1)),
                             rtol=1e-5)
  assert l_align <= 2 * np.sqrt(D * l1) * (1 + 1e-5)


def test_sharded_equals_single_device():
  """shard_map over the batch: value and gradients equal the loss on the global batch."""
  if jax.device_count() < 2:
    pytest.skip("needs several (virtual) devices")
  mesh = jax.make_mesh((2,), ("data",))
  spec = jax.sharding.PartitionSpec("data")
  z1, z2 = (jnp.asarray(v) for v in views(6))
  loss = lambda axis_name: lambda a, b: barlow.barlow_twins(a, b, lambda_=0.1,
                                                            axis_name=axis_name)
  sharded = jax.shard_map(loss("data"), mesh=mesh, in_specs=(spec, spec),
                          out_specs=jax.sharding.PartitionSpec())
  put = lambda z: jax.device_put(z, jax.sharding.NamedSharding(mesh, spec))
  v1, g1 = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(put(z1), put(z2))
  v2, g2 = jax.value_and_grad(loss(None), argnums=(0, 1))(z1, z2)
  np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
  assert rel_err(g1, g2) < 1e-5


@pytest.mark.parametrize("call,name", [
    (lambda: barlow.barlow_twins(np.ones((4, 3)), np.ones((4, 2))), "z1"),
    (lambda: barlow.barlow_twins(np.ones((4, 3)), np.ones((4, 3)), lambda_=-1.0), "lambda_"),
    (lambda: barlow.barlow_twins(np.ones((4, 3)), np.ones((4, 3)), eps=-1.0), "eps"),
    (lambda: barlow.barlow_twins(np.ones(4), np.ones(4)), "z1"),
    (lambda: barlow.paper_infonce_one_negative(np.ones((4, 3)), np.ones((4, 3)),
                                               np.ones((5, 3))), "f_neg"),
    (lambda: barlow.cross_correlation_loss(np.ones((4, 3)), np.ones((4, 3)), -0.1), "lambda_"),
])
def test_bad_arguments_raise(call, name):
  with pytest.raises(ValueError, match=name):
    call()


def special_column(kind):
  """64 x 4 float32 features whose column 0 is constant, nearly constant (relative spread
  1e-6) or huge (~1e30); the other columns are standard normal."""
  rng = np.random.default_rng(0)
  z = rng.standard_normal((64, 4)).astype(np.float32)
  z[:, 0] = {"constant": np.full(64, 0.7),
             "nearly_constant": 0.7 * (1.0 + 1e-6 * rng.standard_normal(64)),
             "huge": 1e30 * rng.standard_normal(64)}[kind]
  return z


def oracle_standardize_eps0(z):
  """float64 standardisation with eps = 0; a constant column (max == min) is 0."""
  z = z.astype(np.float64)
  out = np.zeros_like(z)
  for k in range(z.shape[1]):
    if z[:, k].max() > z[:, k].min():
      centred = z[:, k] - z[:, k].mean()
      out[:, k] = centred / np.sqrt(np.mean(centred ** 2))
  return out


@pytest.mark.parametrize("kind", ["constant", "nearly_constant", "huge"])
def test_standardize_constant_nearly_constant_and_huge_columns(kind):
  """Issue 24.1: a constant column stays exactly 0 with eps = 0 (it used to become ±1: the
  float mean's rounding residual, rescaled by its max), single device and on 8 devices."""
  z = special_column(kind)
  want = oracle_standardize_eps0(z)
  got = np.asarray(barlow.standardize(jnp.asarray(z), eps=0.0), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded = jax.jit(jax.shard_map(lambda x: barlow.standardize(x, eps=0.0, axis_name="data"),
                                  mesh=mesh, in_specs=P("data"), out_specs=P("data")))
  got = np.asarray(sharded(jax.device_put(z, NamedSharding(mesh, P("data")))), np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if kind == "constant":
    assert np.all(got[:, 0] == 0.0)
    # F_00 = 0 for the constant column, F_kk = 1 for the others: L1 = Σ_k (1 - F_kk)² = 1.
    np.testing.assert_allclose(float(barlow.cross_correlation_loss(z, z, 0.005).l1), 1.0,
                               rtol=1e-5)


def test_a_global_batch_of_one_is_an_error():
  """Issue 19.7: batch statistics of one sample are undefined (it used to return 16.0)."""
  with pytest.raises(ValueError, match="z1 must have a global batch of at least 2 rows.* 1"):
    barlow.barlow_twins(np.ones((1, 4)), np.ones((1, 4)))
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  sharded = jax.shard_map(lambda a, b: barlow.barlow_twins(a, b, axis_name="data"), mesh=mesh,
                          in_specs=(P("data"), P("data")), out_specs=P())
  with pytest.raises(ValueError, match="global batch of 1"):
    sharded(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32))


def test_nan_or_inf_inputs_are_errors_naming_the_row():
  z1, z2 = views(7)
  z1 = np.array(z1)
  z1[3, 1] = np.nan
  with pytest.raises(ValueError, match="z1 contains NaN or inf at row 3"):
    barlow.barlow_twins(z1, z2)
  z2 = np.array(z2)
  z2[5, 0] = np.inf
  with pytest.raises(ValueError, match="z2 contains NaN or inf at row 5"):
    barlow.barlow_twins(np.asarray(views(7)[0]), z2)
  # Traced inputs are not inspected (no host round-trip inside a jitted step).
  assert np.isnan(float(jax.jit(barlow.barlow_twins)(z1, z2)))
