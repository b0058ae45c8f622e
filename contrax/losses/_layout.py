"""The stacked two-view batch layout shared by every pairwise loss (SPEC §0).

A batch of B images gives two views `z1, z2` of shape `[B, D]`; stacked, `z = [z1; z2]` has
2B rows and row i's positive is row `(i + B) mod 2B`. Under `shard_map` with `axis_name`,
each device holds `b = B / n_devices` images: its *local rows* (its own 2b anchors) are
scored against the *global columns* (all 2B stacked embeddings, all-gathered over the data
axis). Columns are ordered as on one device holding the concatenated global batch, so the
sharded loss equals the single-device loss on that batch.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from contrax import _checks

NORM_EPS = 1e-12


def l2_normalize(z: jax.Array, axis: int = -1) -> jax.Array:
  """`z / max(‖z‖, 1e-12)`, with a finite gradient at the zero vector and for every finite z.

  Computed as `y / max(‖y‖, 1e-12 / s)` with `y = z / s`, `s = clip(max_k |z_k|, 1e-12, 2¹²⁶)`
  (treated as a constant: the identity holds for every s > 0, so the gradient is exact), so
  that `‖z‖²` cannot overflow for large entries (|z_k| > 1e19 in float32). The cap keeps
  1/s a normal float32 (XLA divides by multiplying with the reciprocal and flushes
  subnormals to zero).
  """
  max_abs = jnp.max(jnp.abs(z), axis=axis, keepdims=True)
  scale = jax.lax.stop_gradient(jnp.clip(max_abs, NORM_EPS, 2.0**126))
  y = z / scale
  sq = jnp.sum(jnp.square(y), axis=axis, keepdims=True)
  return y * jax.lax.rsqrt(jnp.maximum(sq, jnp.square(NORM_EPS / scale)))


class Pairs(NamedTuple):
  """Local anchors against global columns.

  rows: `[2b, D]` this device's stacked anchors `[z1_local; z2_local]`.
  cols: `[2B, D]` all stacked embeddings `[z1_global; z2_global]`.
  self_mask, pos_mask: `[2b, 2B]` booleans marking each row's own column and its positive.
  row_index: `[2b]` the global index of each local row.
  num_global_rows: 2B as a Python int.
  """
  rows: jax.Array
  cols: jax.Array
  self_mask: jax.Array
  pos_mask: jax.Array
  row_index: jax.Array
  num_global_rows: int

  @property
  def negative_mask(self) -> jax.Array:
    return ~(self.self_mask | self.pos_mask)

  @property
  def num_negatives(self) -> int:
    return self.num_global_rows - 2


def all_gather_rows(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Concatenate `x` over the devices of `axis_name` along axis 0 (identity if None)."""
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def device_offset(local_size: int, axis_name: Optional[str]) -> jax.Array:
  """Global index of this device's first local sample (0 without `axis_name`)."""
  if axis_name is None:
    return jnp.zeros((), jnp.int32)
  return jax.lax.axis_index(axis_name) * local_size


def check_views(z1, z2) -> None:
  """Eager shape checks for a pair of views."""
  _checks.rank("z1", z1, 2)
  _checks.rank("z2", z2, 2)
  _checks.same_shape(("z1", "z2"), z1, z2)
  if z1.shape[0] < 1:
    raise ValueError(f"z1 and z2 need at least one row, got shape {z1.shape}")


def stacked_pairs(z1: jax.Array, z2: jax.Array, *, axis_name: Optional[str] = None,
                  normalize: bool = True) -> Pairs:
  """Build the local-rows × global-columns layout of SPEC §0 for views `z1, z2`."""
  check_views(z1, z2)
  if normalize:
    z1, z2 = l2_normalize(z1), l2_normalize(z2)
  b = z1.shape[0]
  g1, g2 = all_gather_rows(z1, axis_name), all_gather_rows(z2, axis_name)
  big_b = g1.shape[0]
  cols = jnp.concatenate([g1, g2], axis=0)
  rows = jnp.concatenate([z1, z2], axis=0)
  offset = device_offset(b, axis_name)
  local = jnp.arange(b) + offset
  row_index = jnp.concatenate([local, local + big_b])
  pos_index = (row_index + big_b) % (2 * big_b)
  col = jnp.arange(2 * big_b)
  self_mask = col[None, :] == row_index[:, None]
  pos_mask = col[None, :] == pos_index[:, None]
  return Pairs(rows, cols, self_mask, pos_mask, row_index, 2 * big_b)


def half_sq_distances(pairs: Pairs) -> tuple[jax.Array, jax.Array]:
  """`d²_ij = 1 - s_ij` (`[2b, 2B]`, half squared distance of unit rows) and `d²_i` (`[2b]`,
  each row's distance to its positive), SPEC §0."""
  d2 = 1.0 - pairs.rows @ pairs.cols.T
  d2_pos = jnp.sum(jnp.where(pairs.pos_mask, d2, 0.0), axis=1)
  return d2, d2_pos


def global_mean(per_row: jax.Array, num_global_rows: int, axis_name: Optional[str]) -> jax.Array:
  """Mean over all global rows of a per-local-row quantity."""
  total = jnp.sum(per_row)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  return total / num_global_rows
