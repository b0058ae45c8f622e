"""The batch geometry every pairwise objective reads: `Pairs`, built once per step.

A batch of B images gives two views `z1, z2` of shape `[B, D]`; stacked, `z = [z1; z2]` has
2B rows, row i's positive is row `p(i) = (i + B) mod 2B` and the other N = 2B - 2 rows are
its negatives. Under `jax.shard_map` with `axis_name`, each device holds `b = B / n_devices`
images: its *local rows* (its own 2b anchors `[z1_loc; z2_loc]`) are scored against the
*global columns* `[z1_global; z2_global]` (2B rows). Columns are ordered as on one device
holding the concatenated global batch, so every sharded objective equals the single-device
one on that batch.

`build` normalises the views, gathers the columns with ONE all-gather of the stacked local
rows (device-major `[z1_d; z2_d]_d`, reordered by a static reshape), and computes the
`[2b, 2B]` similarities `s_ij = z_iᵀ z_j` once; weightings (`contrax.weights`) and losses
(`contrax.losses`) all read the same `Pairs`. The columns are gathered as a device-invariant
array (`jax.lax.all_gather(..., to="invarying")`): every device holds the same values, which
lets solvers with device-invariant control flow (ott-jax's Sinkhorn under `shard_map`) run on
them directly; its backward pass is one all-reduce of the `[2B, D]` column cotangent.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks

__all__ = [
    "NORM_EPS", "at_least_float32", "l2_normalize", "check_views", "all_gather_rows",
    "device_offset", "Pairs",
    "build", "local_rows", "check_finite",
]

NORM_EPS = 1e-12


def at_least_float32(z: jax.Array) -> jax.Array:
  """`z` in float32 if its dtype is a narrower float (bfloat16, float16), else unchanged.

  Every loss starts here (mixed precision: the network may compute in bfloat16, the loss side
  does not): normalisation, similarities, log-sum-exp and batch statistics run in float32.
  bfloat16 keeps 8 significant bits, so `exp(s / t)` and `Σ_j exp(...)` computed in it would
  be off by ~2⁻⁸ relative per term and lose small negatives' contributions entirely; the
  upcast costs `[B, D]` converts, nothing next to the `[2B, 2B]` similarities. The gradient
  flows back through the cast in the input's dtype.
  """
  dtype = jnp.result_type(z)
  if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
    return jnp.asarray(z, jnp.float32)
  return z


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


def check_views(z1, z2) -> None:
  """Eager shape checks for a pair of views."""
  _checks.rank("z1", z1, 2)
  _checks.rank("z2", z2, 2)
  _checks.same_shape(("z1", "z2"), z1, z2)
  if z1.shape[0] < 1:
    raise ValueError(f"z1 and z2 need at least one row, got shape {z1.shape}")


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


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["rows", "cols", "sims", "self_mask", "pos_mask", "row_index"],
                   meta_fields=["num_global_rows", "axis_name"])
@dataclasses.dataclass(frozen=True)
class Pairs:
  """Local anchors against global columns (a pytree: passes through jit, grad, shard_map).

  rows: `[2b, D]` this device's stacked anchors `[z1_local; z2_local]`.
  cols: `[2B, D]` all stacked embeddings `[z1_global; z2_global]` (device-invariant).
  sims: `[2b, 2B]` `s_ij = rows_i · cols_j` (cosine similarities when normalised).
  self_mask, pos_mask: `[2b, 2B]` booleans marking each row's own column and its positive.
  row_index: `[2b]` the global stacked index of each local row.
  num_global_rows: 2B (static). axis_name: the data axis, or None on one device (static).
  """
  rows: jax.Array
  cols: jax.Array
  sims: jax.Array
  self_mask: jax.Array
  pos_mask: jax.Array
  row_index: jax.Array
  num_global_rows: int
  axis_name: Optional[str]

  @property
  def negative_mask(self) -> jax.Array:
    """`[2b, 2B]`: True on each row's N = 2B - 2 negatives."""
    return ~(self.self_mask | self.pos_mask)

  @property
  def num_negatives(self) -> int:
    return self.num_global_rows - 2

  @property
  def pos_sims(self) -> jax.Array:
    """`[2b]`: `s_{i,p(i)}`, each row's similarity to its positive."""
    return jnp.sum(jnp.where(self.pos_mask, self.sims, 0.0), axis=1)

  def global_mean(self, per_row: jax.Array) -> jax.Array:
    """Mean over all 2B global rows of a per-local-row quantity `[2b]` (a psum of the sums)."""
    total = jnp.sum(per_row)
    if self.axis_name is not None:
      total = jax.lax.psum(total, self.axis_name)
    return total / self.num_global_rows


def _varies_over(x: jax.Array, axis_name: str) -> bool:
  """Whether `x` is typed as varying over `axis_name` (shard_map's manual-axis types)."""
  aval = jax.typeof(x)
  varying = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
  if varying is None:  # the attribute's name before JAX 0.9
    return axis_name in getattr(aval, "vma", frozenset())
  return axis_name in varying


def build(z1: jax.Array, z2: jax.Array, *, axis_name: Optional[str] = None,
          normalize: bool = True) -> Pairs:
  """The local-rows × global-columns geometry of views `z1, z2` (`[b, D]` each).

  Args:
    z1, z2: the two views' embeddings on this device (bfloat16 / float16 are upcast to
      float32 first: `at_least_float32`).
    axis_name: the data axis under `shard_map` (columns gathered over it), or None.
    normalize: L2-normalise the rows first (`l2_normalize`); False uses them as given.
  Returns:
    a `Pairs`; one all-gather of the `[2b, D]` stacked embeddings runs when `axis_name` is set.
  """
  check_views(z1, z2)
  z1, z2 = at_least_float32(z1), at_least_float32(z2)  # the loss side stays float32
  if normalize:
    z1, z2 = l2_normalize(z1), l2_normalize(z2)
  b, dim = z1.shape
  rows = jnp.concatenate([z1, z2], axis=0)
  if axis_name is None:
    cols, n_devices = rows, 1
  else:
    # Device-invariant under shard_map's type system (where `rows` varies over the axis);
    # a named vmap, or shard_map with check_vma=False, has no such types.
    to = "invarying" if _varies_over(rows, axis_name) else "varying"
    gathered = jax.lax.all_gather(rows, axis_name, axis=0, to=to)  # [n, 2b, D]
    n_devices = gathered.shape[0]
    cols = gathered.reshape(n_devices, 2, b, dim).swapaxes(0, 1).reshape(2 * b * n_devices, dim)
  big_b = b * n_devices
  local = jnp.arange(b) + device_offset(b, axis_name)
  row_index = jnp.concatenate([local, local + big_b])
  pos_index = (row_index + big_b) % (2 * big_b)
  col = jnp.arange(2 * big_b)
  self_mask = col[None, :] == row_index[:, None]
  pos_mask = col[None, :] == pos_index[:, None]
  return Pairs(rows, cols, rows @ cols.T, self_mask, pos_mask, row_index, 2 * big_b, axis_name)


def local_rows(x: jax.Array, pairs: Pairs) -> jax.Array:
  """This device's stacked rows `[2b, ...]` of a global `[2B, ...]` array, by a static-shape
  dynamic slice of each view's block at the device offset (no gather, no collective)."""
  if pairs.axis_name is None:
    return x
  b = pairs.rows.shape[0] // 2
  big_b = pairs.num_global_rows // 2
  offset = device_offset(b, pairs.axis_name)
  first = jax.lax.dynamic_slice_in_dim(x, offset, b, axis=0)
  second = jax.lax.dynamic_slice_in_dim(x, offset + big_b, b, axis=0)
  return jnp.concatenate([first, second], axis=0)


def check_finite(name: str, x) -> None:
  """For a concrete array, ValueError naming the first row with a NaN or inf; traced arrays
  (inside jit/grad) are not checked."""
  if isinstance(x, jax.core.Tracer):
    return
  bad = ~np.isfinite(np.asarray(x, np.float64))
  if np.any(bad):
    row = int(np.argwhere(bad)[0][0])
    raise ValueError(f"{name} contains NaN or inf at row {row}")
