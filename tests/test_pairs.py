"""The batch geometry (contrax.pairs) against a float64 NumPy construction of the stacked layout:
rows `[z1; z2]`, columns the global stack, row i's positive (i + B) mod 2B."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from contrax import pairs

B, D, N_DEV = 16, 5, 8


def views(seed=0, b=B):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, D)).astype(np.float32), rng.normal(size=(b, D)).astype(np.float32))


def oracle(z1, z2):
  """float64 unit stacked rows, similarities, self and positive masks."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = z.shape[0]
  i = np.arange(n)
  return z, z @ z.T, i[:, None] == i[None, :], i[None, :] == ((i + n // 2) % n)[:, None]


def test_single_device_geometry_matches_oracle():
  z1, z2 = views()
  g = pairs.build(z1, z2)
  z, sims, self_mask, pos_mask = oracle(z1, z2)
  np.testing.assert_allclose(np.asarray(g.rows), z, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(g.cols), z, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(g.sims), sims, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(g.self_mask), self_mask)
  np.testing.assert_array_equal(np.asarray(g.pos_mask), pos_mask)
  np.testing.assert_array_equal(np.asarray(g.negative_mask), ~(self_mask | pos_mask))
  np.testing.assert_allclose(np.asarray(g.pos_sims), sims[pos_mask], rtol=1e-5, atol=1e-6)
  assert g.num_global_rows == 2 * B and g.num_negatives == 2 * B - 2 and g.axis_name is None
  per_row = np.arange(2 * B, dtype=np.float32)
  assert float(g.global_mean(jnp.asarray(per_row))) == pytest.approx(per_row.mean())
  raw = pairs.build(z1, z2, normalize=False)
  np.testing.assert_allclose(np.asarray(raw.rows), np.concatenate([z1, z2]))


def test_pairs_is_a_pytree_through_jit():
  z1, z2 = views(1)
  g = jax.jit(pairs.build)(z1, z2)
  leaves, tree = jax.tree.flatten(g)
  assert len(leaves) == 6
  back = jax.tree.unflatten(tree, leaves)
  assert back.num_global_rows == 2 * B and back.axis_name is None


def test_sharded_geometry_is_the_global_one_seen_from_each_device():
  """On 8 devices: the columns are the single-device columns on every device, each device's
  rows, masks, similarities and global row indices are its rows of the single-device ones,
  and `local_rows` takes them from a global array without a collective."""
  z1, z2 = views(2)
  mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("data",))
  b = B // N_DEV

  def local(a, c):
    g = pairs.build(a, c, axis_name="data")
    index = jnp.arange(2 * B, dtype=jnp.float32)[:, None]
    return (g.rows, g.cols[None], g.sims, g.pos_mask, g.row_index,
            pairs.local_rows(index, g)[:, 0], g.global_mean(jnp.ones(2 * b)))

  out_specs = (P("data"), P("data"), P("data"), P("data"), P("data"), P("data"), P())
  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data")),
                             out_specs=out_specs))
  put = lambda z: jax.device_put(z, NamedSharding(mesh, P("data")))
  rows, cols, sims, pos_mask, row_index, sliced, mean = fn(put(z1), put(z2))
  z, want_sims, _, want_pos = oracle(z1, z2)
  order = np.concatenate([np.r_[d * b:(d + 1) * b, B + d * b:B + (d + 1) * b]
                          for d in range(N_DEV)])
  np.testing.assert_array_equal(np.asarray(row_index), order)
  np.testing.assert_array_equal(np.asarray(sliced), order)
  np.testing.assert_allclose(np.asarray(rows), z[order], rtol=1e-6, atol=1e-7)
  for device_cols in np.asarray(cols):
    np.testing.assert_allclose(device_cols, z, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(sims), want_sims[order], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(pos_mask), want_pos[order])
  assert float(mean) == 1.0


def test_check_finite_and_check_views():
  z1, z2 = views(3)
  bad = z1.copy()
  bad[7, 0] = np.inf
  with pytest.raises(ValueError, match="z1 contains NaN or inf at row 7"):
    pairs.check_finite("z1", bad)
  with pytest.raises(ValueError, match="same shape"):
    pairs.build(z1, z2[:, :3])
  with pytest.raises(ValueError, match="at least one row"):
    pairs.build(z1[:0], z2[:0])
