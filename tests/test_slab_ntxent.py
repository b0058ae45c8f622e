"""The hand-differentiated NT-Xent kernels (contrax.losses._slab_ntxent) against float64 NumPy.

The oracle is the NT-Xent of the stacked batch written with direct exponentials,

    l_i = -log(e^{s_{i,p(i)}/t} / Σ_{j≠i} e^{s_ij/t})        (decoupled: Σ_{j∉{i,p(i)}}),

with `p(i) = (i + B) mod 2B`, and its gradient is taken by central finite differences in
float64. The code runs in float32 under `jax.shard_map` over a 'data' axis of 8 virtual
devices (the slab: local rows against all-gathered columns) and of 1 device (the symmetric
kernel), and must agree to 1e-5 (relative) in value and gradient at every temperature.
"""
from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from contrax.losses import infonce
from contrax.losses import _slab_ntxent
from contrax.losses._slab_ntxent import ntxent_mean
from oracles import fd_grad, rel_err

TEMPERATURES = (0.01, 0.1, 0.5, 2.0)
D = 5


def oracle_ntxent(z1, z2, t, decoupled=False, normalize=False):
  """Mean NT-Xent of the stacked views in float64 (rows used as given unless `normalize`)."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  if normalize:
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  n = z.shape[0]
  s = z @ z.T / t
  losses = []
  for i in range(n):
    p = (i + n // 2) % n
    negatives = [j for j in range(n) if j not in (i, p)]
    if decoupled:
      losses.append(np.log(np.sum(np.exp(s[i, negatives]))) - s[i, p])
    else:  # -log(e^{s_ip} / (e^{s_ip} + Σ_neg)) as log1p: exact when the loss is tiny
      losses.append(np.log1p(np.sum(np.exp(s[i, negatives] - s[i, p]))))
  return float(np.mean(losses))


def unit_views(seed, b, scale=0.5):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(b, D))
  z2 = z1 + scale * rng.normal(size=(b, D))
  unit = lambda z: (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
  return unit(z1), unit(z2)


def slab_loss(t, decoupled):
  """The caller's side of the sharded kernel: gather the columns, take the global mean."""
  def loss(z1, z2):
    b = z1.shape[0]
    g1 = jax.lax.all_gather(z1, "data", axis=0, tiled=True)
    g2 = jax.lax.all_gather(z2, "data", axis=0, tiled=True)
    big_b = g1.shape[0]
    local = jnp.arange(b) + jax.lax.axis_index("data") * b
    return ntxent_mean(jnp.concatenate([z1, z2]), jnp.concatenate([g1, g2]),
                       jnp.concatenate([local, local + big_b]), temperature=t,
                       decoupled=decoupled, axis_name="data")
  return loss


def sharded_value_and_grad(loss, z1, z2, num_devices):
  mesh = jax.make_mesh((num_devices,), ("data",), devices=jax.devices()[:num_devices])
  spec = PartitionSpec("data")
  step = jax.jit(jax.value_and_grad(
      jax.shard_map(loss, mesh=mesh, in_specs=(spec, spec), out_specs=PartitionSpec()),
      argnums=(0, 1)))
  sharding = jax.sharding.NamedSharding(mesh, spec)
  value, grads = step(jax.device_put(jnp.asarray(z1), sharding),
                      jax.device_put(jnp.asarray(z2), sharding))
  return float(value), [np.asarray(g) for g in grads]


def check(loss, oracle, z1, z2, num_devices):
  value, grads = sharded_value_and_grad(loss, z1, z2, num_devices)
  want = oracle(z1, z2)
  # Relative 1e-5, absolute 1e-5 below |loss| = 1: the loss is a difference of logits as large
  # as 1/t (100 at t = 0.01) rounded in float32 (eps 1.2e-7), so a small loss carries an
  # absolute rounding error of order 1e-5 whatever the summation order XLA picks.
  assert abs(value - want) <= 1e-5 * max(abs(want), 1.0), (value, want)
  assert all(np.all(np.isfinite(g)) for g in grads)
  err = rel_err(grads, fd_grad(oracle, z1, z2))
  assert err < 1e-5, err


@pytest.mark.parametrize("num_devices,per_device", [(8, 1), (8, 2), (1, 6)])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_slab_matches_oracle(t, decoupled, num_devices, per_device):
  """The slab kernel itself, on unit rows (no normalisation), at B = 1 and 2 per device."""
  z1, z2 = unit_views(0, num_devices * per_device)
  check(slab_loss(t, decoupled), lambda a, b: oracle_ntxent(a, b, t, decoupled), z1, z2,
        num_devices)


@pytest.mark.parametrize("num_devices", [8, 1])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_infonce_with_axis_name_matches_oracle(t, decoupled, num_devices):
  """What training runs: `infonce(..., axis_name='data')` under shard_map, on raw embeddings
  (normalised inside); 8 devices take the slab, 1 device the symmetric kernel."""
  rng = np.random.default_rng(1)
  z1 = rng.normal(size=(8, D)).astype(np.float32)
  z2 = (z1 + 0.5 * rng.normal(size=(8, D))).astype(np.float32)
  loss = lambda a, b: infonce(a, b, temperature=t, decoupled=decoupled, axis_name="data")
  check(loss, lambda a, b: oracle_ntxent(a, b, t, decoupled, normalize=True), z1, z2,
        num_devices)


@pytest.mark.parametrize("num_devices", [8, 1])
@pytest.mark.parametrize("t", [0.01, 0.5])
def test_duplicate_and_zero_rows(t, num_devices):
  """Duplicated rows (ties in the softmax) and zero rows (all similarities 0) change nothing."""
  z1, z2 = unit_views(2, 8)
  z1[3] = z1[1]
  z2[5] = z1[1]
  z1[6] = 0.0
  z2[2] = 0.0
  check(slab_loss(t, False), lambda a, b: oracle_ntxent(a, b, t), z1, z2, num_devices)
  kernel = lambda a, b: ntxent_mean(jnp.concatenate([a, b]), jnp.concatenate([a, b]),
                                    jnp.arange(16), temperature=t)
  value, grads = jax.value_and_grad(kernel, argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(z2))
  oracle = lambda a, b: oracle_ntxent(a, b, t)
  assert abs(float(value) - oracle(z1, z2)) <= 1e-5 * oracle(z1, z2)
  assert rel_err(grads, fd_grad(oracle, z1, z2)) < 1e-5


@pytest.mark.parametrize("t", [1e-4, 1e4])
@pytest.mark.parametrize("decoupled", [False, True])
def test_finite_at_extreme_temperatures(t, decoupled):
  """exp(s/t) overflows float32 for t = 1e-4; the shifted log-sum-exp must not."""
  z1, z2 = unit_views(3, 8, scale=2.0)
  z2[0] = -z1[0]
  for num_devices in (8, 1):
    value, grads = sharded_value_and_grad(slab_loss(t, decoupled), z1, z2, num_devices)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("num_devices", [8, 1])
@pytest.mark.parametrize("t", [0.01, 0.1])
def test_forward_mode_equals_reverse_mode(t, num_devices):
  """The derivative is a custom JVP: jvp along a direction equals grad · direction, sharded
  (the columns' share counted through the rows) and on one device."""
  z1, z2 = unit_views(4, 8)
  mesh = jax.make_mesh((num_devices,), ("data",), devices=jax.devices()[:num_devices])
  spec = PartitionSpec("data")
  loss = jax.jit(jax.shard_map(slab_loss(t, False), mesh=mesh, in_specs=(spec, spec),
                               out_specs=PartitionSpec()))
  put = lambda x: jax.device_put(jnp.asarray(x, jnp.float32),
                                 jax.sharding.NamedSharding(mesh, spec))
  rng = np.random.default_rng(5)
  z1, z2, d1, d2 = (put(x) for x in (z1, z2, rng.normal(size=z1.shape),
                                     rng.normal(size=z1.shape)))
  with jax.set_mesh(mesh):
    _, forward = jax.jvp(loss, (z1, z2), (d1, d2))
    g1, g2 = jax.grad(loss, argnums=(0, 1))(z1, z2)
  np.testing.assert_allclose(float(forward), float(jnp.sum(g1 * d1) + jnp.sum(g2 * d2)),
                             rtol=1e-5)


@pytest.mark.parametrize("num_devices", [8, 1])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("t", [0.01, 0.5])
def test_rows_swept_in_padded_blocks_match_oracle(t, decoupled, num_devices, monkeypatch):
  """The slab swept in 3 blocks of 4 rows (10 rows and 2 of padding per device), both with
  the constant shift and with the per-row maximum, against the float64 oracle."""
  per_device = 5
  num_cols = 2 * num_devices * per_device
  monkeypatch.setattr(_slab_ntxent, "ROW_BLOCK_ELEMENTS", 4 * num_cols)
  assert _slab_ntxent._row_blocks(2 * per_device, num_cols) == (3, 4)
  z1, z2 = unit_views(6, num_devices * per_device)
  check(slab_loss(t, decoupled), lambda a, b: oracle_ntxent(a, b, t, decoupled), z1, z2,
        num_devices)
