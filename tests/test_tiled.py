"""Tiled and ring InfoNCE (contrax.losses.tiled): exact against a float64 oracle of the loss
and against the dense loss (value and gradients), on one device and on a ring of 8."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from contrax import weights
from contrax.losses import tiled
from contrax.losses.infonce import infonce
from oracles import on_views

RTOL = 1e-5


def oracle(z1, z2, *, temperature, tau_plus=0.0, beta=0.0, decoupled=False):
  """Weighted InfoNCE in float64 NumPy, written from the formula: pos, weighted neg, clamp,
  mean."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  m = z.shape[0]
  big_b = m // 2
  n = m - 2
  a = z @ z.T / temperature
  losses = []
  for i in range(m):
    p = (i + big_b) % m
    neg = np.array([j not in (i, p) for j in range(m)])
    w = np.exp(beta * a[i, neg] - np.max(beta * a[i, neg]))
    w /= w.sum()
    pos_i = np.exp(a[i, p])
    neg_i = n * np.sum(w * np.exp(a[i, neg]))
    ng = neg_i
    if tau_plus > 0:
      ng = max((neg_i - tau_plus * n * pos_i) / (1 - tau_plus), n * math.exp(-1 / temperature))
    losses.append(np.log(ng) - a[i, p] if decoupled else -np.log(pos_i / (pos_i + ng)))
  return float(np.mean(losses))


def dense(z1, z2, *, temperature, tau_plus=0.0, beta=0.0, decoupled=False, axis_name=None):
  """The dense loss with the same variant; HCL weights by `weights.hcl` (no stop-gradient)."""
  w = None
  if beta > 0:
    w = on_views(weights.hcl)(z1, z2, beta=beta, temperature=temperature, axis_name=axis_name)
  return infonce(z1, z2, temperature=temperature, weights=w, tau_plus=tau_plus,
                 decoupled=decoupled, axis_name=axis_name)


def views(key, b, d=6):
  k1, k2 = jax.random.split(jax.random.key(key))
  return jax.random.normal(k1, (b, d)), jax.random.normal(k2, (b, d))


def assert_grads_close(got, want):
  for g, w in zip(got, want):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    assert np.linalg.norm(g - w) <= RTOL * np.linalg.norm(w)
    np.testing.assert_allclose(g, w, rtol=RTOL, atol=RTOL * np.max(np.abs(w)))


VARIANTS = {
    "plain": dict(),
    "debiased": dict(tau_plus=0.1),
    "hcl": dict(beta=1.0, tau_plus=0.1),
    "hcl_no_debias": dict(beta=0.7),
    "decoupled": dict(decoupled=True),
    "decoupled_debiased": dict(decoupled=True, tau_plus=0.05),
}


def value_and_grads(fn, z1, z2):
  return jax.jit(jax.value_and_grad(fn, (0, 1)))(z1, z2)


# Batch sizes b (2b stacked rows) and tiles, one per variant: a tile larger than 2b, one equal
# to it, then tiles that do not divide 2b (several tiles, padded).
SHAPES = [(8, 16), (9, 18), (13, 4), (11, 7), (5, 3), (6, 5)]


@pytest.mark.parametrize("variant, shape, seed",
                         [(v, shape, i) for i, (v, shape) in enumerate(zip(VARIANTS, SHAPES))])
def test_single_device_matches_oracle_and_dense(variant, shape, seed):
  kw = VARIANTS[variant]
  b, tile = shape
  t = float(np.random.default_rng(seed).uniform(0.2, 1.0))
  z1, z2 = views(seed, b)
  value, grads = value_and_grads(
      lambda a, c: tiled.tiled_infonce(a, c, temperature=t, tile_size=tile, **kw), z1, z2)
  want, want_grads = value_and_grads(lambda a, c: dense(a, c, temperature=t, **kw), z1, z2)
  np.testing.assert_allclose(value, oracle(np.asarray(z1), np.asarray(z2), temperature=t, **kw),
                             rtol=RTOL)
  np.testing.assert_allclose(value, want, rtol=RTOL)
  assert_grads_close(grads, want_grads)


def test_small_temperature_clamp_and_zero_vectors_stay_finite_and_exact():
  z1, z2 = views(4, 6)
  z1 = z1.at[0].set(0.0)  # a zero embedding: s = 0 with every column
  kw = dict(temperature=0.02, tau_plus=0.3)  # the clamp N e^{-1/t} binds for some rows
  value, grads = value_and_grads(lambda a, c: tiled.tiled_infonce(a, c, tile_size=5, **kw),
                                 z1, z2)
  want, want_grads = value_and_grads(lambda a, c: dense(a, c, **kw), z1, z2)
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_allclose(value, want, rtol=RTOL)
  assert_grads_close(grads, want_grads)


def ring_mesh(n_devices=8):
  return Mesh(np.array(jax.devices()[:n_devices]), ("data",))


def ring_loss(fn, mesh):
  return jax.shard_map(lambda a, c: fn(a, c, axis_name="data"), mesh=mesh,
                       in_specs=(P("data"), P("data")), out_specs=P())


@pytest.mark.parametrize("variant, n_devices",
                         [("hcl", 8), ("decoupled_debiased", 8), ("plain", 2)])
def test_ring_equals_single_device_dense(variant, n_devices):
  mesh = ring_mesh(n_devices)
  assert mesh.size == n_devices
  kw = VARIANTS[variant]
  z1, z2 = views(5, n_devices * 3)  # 2b = 6 local rows per device, tiles of 4: padded tiles
  fn = lambda a, c, axis_name: tiled.tiled_infonce(a, c, temperature=0.4, tile_size=4,
                                                   axis_name=axis_name, **kw)
  value, grads = value_and_grads(ring_loss(fn, mesh), z1, z2)
  want, want_grads = value_and_grads(lambda a, c: dense(a, c, temperature=0.4, **kw), z1, z2)
  np.testing.assert_allclose(value, want, rtol=RTOL)
  assert_grads_close(grads, want_grads)


def test_ring_passes_blocks_and_never_gathers():
  mesh = ring_mesh()
  z1, z2 = views(6, 16)
  fn = lambda a, c, axis_name: tiled.tiled_infonce(a, c, tile_size=4, axis_name=axis_name)
  jaxpr = str(jax.make_jaxpr(jax.grad(ring_loss(fn, mesh), (0, 1)))(z1, z2))
  assert "ppermute" in jaxpr
  assert "all_gather" not in jaxpr and "all_to_all" not in jaxpr


def test_infonce_switch_dispatches_and_rejects_what_tiling_cannot_do():
  z1, z2 = views(7, 7)
  kw = dict(temperature=0.5, tau_plus=0.1, decoupled=True)
  value, grads = value_and_grads(
      lambda a, c: infonce(a, c, implementation="tiled", tile_size=3, **kw), z1, z2)
  want, want_grads = value_and_grads(lambda a, c: infonce(a, c, **kw), z1, z2)
  np.testing.assert_allclose(value, want, rtol=RTOL)
  assert_grads_close(grads, want_grads)
  w = on_views(weights.uniform)(z1, z2)
  with pytest.raises(ValueError, match="weights"):
    infonce(z1, z2, weights=w, implementation="tiled")
  with pytest.raises(ValueError, match="queue"):
    infonce(z1, z2, queue=jnp.ones((3, 6)), implementation="tiled")
  with pytest.raises(ValueError, match="implementation"):
    infonce(z1, z2, implementation="sparse")
  with pytest.raises(ValueError, match="tile_size"):
    infonce(z1, z2, tile_size=4)
  with pytest.raises(ValueError, match="tile_size"):
    infonce(z1, z2, implementation="tiled", tile_size=0)


def test_bad_arguments_name_themselves():
  z1, z2 = views(8, 4)
  with pytest.raises(ValueError, match="beta"):
    tiled.tiled_infonce(z1, z2, beta=-1.0)
  with pytest.raises(ValueError, match="temperature"):
    tiled.tiled_infonce(z1, z2, temperature=0.0)
  with pytest.raises(ValueError, match="tau_plus"):
    tiled.tiled_infonce(z1, z2, tau_plus=1.0)
  with pytest.raises(ValueError, match="negative"):
    tiled.tiled_infonce(z1[:1], z2[:1])
  with pytest.raises(ValueError, match="same shape"):
    tiled.tiled_infonce(z1, z2[:3])


def test_no_square_buffer_is_materialised():
  b, d, tile = 1024, 8, 128
  z1, z2 = jnp.ones((b, d)), jnp.ones((b, d))
  slab_bytes = (2 * b) ** 2 * 4

  def temp_bytes(fn):
    compiled = jax.jit(jax.value_and_grad(fn, (0, 1))).lower(z1, z2).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(lambda a, c: infonce(a, c)) >= slab_bytes  # the measure sees the slab
  assert temp_bytes(lambda a, c: tiled.tiled_infonce(a, c, tile_size=tile)) < slab_bytes / 16
