"""NT-Xent with hand-written derivatives: the path every uniform-weight InfoNCE takes.

`sharded_ntxent`: the global mean loss of the devices' slabs (local rows × global columns)
under `shard_map`, one `[2b, 2B]` matmul and one exp pass forward, one matmul backward.
`stacked_ntxent`: the mean loss when the rows are the columns (one device), one matmul
forward and one backward. `ntxent_mean` picks between them from the size of the data axis.

Layout (the stacked two-view batch): the global batch has B images and 2B stacked unit
embeddings `[z1; z2]`; column j's positive is `(j + B) mod 2B`. A device holds 2b local rows
(its anchors) and scores them against all 2B columns (all-gathered by the caller). For local
row i with global index g(i), positive p(i) = (g(i) + B) mod 2B and `s_ij = rows_i · cols_j`:

    l_i = softplus(log Σ_{j ∉ {g(i), p(i)}} e^{s_ij/t} − s_{i,p(i)}/t)
        = −log(e^{s_{i,p(i)}/t} / Σ_{j ≠ g(i)} e^{s_ij/t})                  (NT-Xent)
    l_i = log Σ_{j ∉ {g(i), p(i)}} e^{s_ij/t} − s_{i,p(i)}/t                 (decoupled)

(NT-Xent: Chen et al. 2020, arXiv 2002.05709; decoupled: Yeh et al. 2022.) With P the row
softmax over the denominator's columns and Π the positive indicator, `∂l_i/∂s_ij = Q_ij =
(P_ij − Π_ij)/t`, and as `S = z zᵀ` is symmetric the gradient of `mean_i l_i` is
`(Q + Qᵀ) z / 2B`. On one device that is one matmul, and with the constant shift below `e`
is symmetric, so `Qᵀ` needs no transpose (on CPU a matmul contracting over the rows of a
`[2B, 2B]` array is ~2.5× slower than one contracting over its columns). Sharded, a device
holds rows of Q but needs the columns of Q for its own rows: by symmetry these are its own
slab rows rescaled by the other rows' normalisers, so one all-gather of two numbers per row
replaces the transposed matmul and the all-reduce of a `[2B, D]` column gradient.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

# Above this temperature every exp((s - 1)/t) with |s| <= 1 is a normal float32 (>= e^-80), so
# the constant shift 1/t replaces the per-row max of the log-sum-exp (one reduction saved).
CONSTANT_SHIFT_MIN_TEMPERATURE = 2.0 / 80.0


def _gather_column_stats(stats: jax.Array, axis_name: str) -> jax.Array:
  """Per-row statistics `[2b, k]` of every device, in global column order `[2B, k]`.

  Each device's rows are its `[z1_loc; z2_loc]` blocks and the devices come in axis order
  (`contrax.pairs.build`'s layout), so the device-major gather `[n, 2, b, k]` is reordered to
  `[2, n, b, k]` by a static reshape, as `build` reorders the columns."""
  gathered = jax.lax.all_gather(stats, axis_name, axis=0)  # [n, 2b, k]
  n, two_b, k = gathered.shape
  return gathered.reshape(n, 2, two_b // 2, k).swapaxes(0, 1).reshape(n * two_b, k)


def _sharded_parts(rows, cols, row_index, temperature, decoupled, axis_name):
  """Per-row losses of the slab and a thunk for the gradient of the global mean loss with
  respect to this device's rows, the columns' share included (`cols = all_gather(rows)`).

  The gradient of `L = Σ_i l_i / 2B` for global row m is `(Σ_j Q_mj z_j + Σ_i Q_im z_i) / 2B`.
  The first sum is this device's slab row times the columns. The second needs column m of Q
  over all rows; `s` is symmetric, so off the positive it is `P_im = exp(s_mi/t − lse_i)`, read
  from this device's own slab row m with the gathered log-sum-exps `lse_i` (with the constant
  shift, `e_mi / r_i`), and at the positive `Q_{p(m),m} = −(1 − P_{p(m),m})/t` with the
  gathered `1 − P`. The row gradient is then one `[2b, 2B] @ [2B, D]` matmul contracting over
  the columns, after one all-gather of two numbers per row: no transposed matmul and no
  all-reduce of a `[2B, D]` column cotangent.
  """
  t = temperature
  num_cols = cols.shape[0]
  pos_index = (row_index + num_cols // 2) % num_cols
  col = jnp.arange(num_cols)
  is_positive = col[None, :] == pos_index[:, None]
  in_denominator = col[None, :] != row_index[:, None]
  if decoupled:
    in_denominator &= ~is_positive
  sims = rows @ cols.T
  constant_shift = t >= CONSTANT_SHIFT_MIN_TEMPERATURE
  if constant_shift:
    shift = jnp.full((rows.shape[0], 1), 1.0 / t, rows.dtype)
  else:
    shift = jnp.max(jnp.where(in_denominator, sims / t, -jnp.inf), axis=1, keepdims=True)
  e = jnp.where(in_denominator, jnp.exp(sims / t - shift), 0.0)
  r = jnp.sum(e, axis=1)
  # The negatives' sum is reduced on its own, not as r - e_pos, which cancels when the
  # positive dominates; 1 - P_ip = r_neg / r likewise.
  r_neg = r if decoupled else jnp.sum(jnp.where(is_positive, 0.0, e), axis=1)
  pos_sim = jnp.sum(rows * jnp.take(cols, pos_index, axis=0), axis=1)
  log_ratio = shift[:, 0] - pos_sim / t + jnp.log(jnp.maximum(r_neg, jnp.finfo(r.dtype).tiny))
  per_row = log_ratio if decoupled else jax.nn.softplus(log_ratio)

  def gradient():
    inv_r = 1.0 / r
    # Q_ip = -(1 - P_ip) = -r_neg / r (decoupled: -1); e / r is the softmax elsewhere.
    off_positive = jnp.ones_like(r) if decoupled else r_neg * inv_r
    own = inv_r if constant_shift else shift[:, 0] + jnp.log(r)
    column = _gather_column_stats(jnp.stack([own, off_positive], axis=1), axis_name)
    if constant_shift:  # e is symmetric: P_im = e_mi / r_i
      negative_part = e * (inv_r[:, None] + column[None, :, 0])
    else:
      negative_part = e * inv_r[:, None] + jnp.where(
          in_denominator, jnp.exp(sims / t - column[None, :, 0]), 0.0)
    both = jnp.where(is_positive, -(off_positive[:, None] + column[None, :, 1]),
                     negative_part)
    return both @ cols / (num_cols * t)

  return per_row, gradient


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _sharded_ntxent(rows, cols, row_index, temperature, decoupled, axis_name):
  per_row, _ = _sharded_parts(rows, cols, row_index, temperature, decoupled, axis_name)
  return jax.lax.psum(jnp.sum(per_row), axis_name) / cols.shape[0]


@_sharded_ntxent.defjvp
def _sharded_ntxent_jvp(temperature, decoupled, axis_name, primals, tangents):
  # The tangent of the global mean is psum over devices of Σ_rows G · rows_dot, G being the
  # full gradient of each device's rows (their columns' share included), so the columns'
  # tangent is not read: `cols` must be the all-gather of the devices' `rows` (the contract of
  # `sharded_ntxent`). Reverse mode then sends the columns no cotangent.
  rows, cols, row_index = primals
  per_row, gradient = _sharded_parts(rows, cols, row_index, temperature, decoupled, axis_name)
  value = jax.lax.psum(jnp.sum(per_row), axis_name) / cols.shape[0]
  return value, jax.lax.psum(jnp.sum(gradient() * tangents[0]), axis_name)


def sharded_ntxent(rows: jax.Array, cols: jax.Array, row_index: jax.Array, *,
                   temperature: float, axis_name: str, decoupled: bool = False) -> jax.Array:
  """Global mean NT-Xent `psum(Σ_i l_i) / 2B` of the devices' slabs under `shard_map`.

  Args:
    rows: `[2b, D]` this device's unit anchors `[z1_loc; z2_loc]`.
    cols: `[2B, D]` all unit stacked columns `[z1_global; z2_global]`: the all-gather of every
      device's `rows` in axis order (`contrax.pairs.build`). The derivative counts the columns
      through the rows and does not read the columns' own tangent.
    row_index: `[2b]` integer global index of each local row (its own column).
    temperature: t > 0 (a Python float).
    axis_name: the data axis the columns were gathered over.
    decoupled: drop the positive from the denominator (Yeh et al. 2022).

  Finite, with a finite derivative, at every temperature and for every finite input;
  differentiable in forward and reverse mode.
  """
  return _sharded_ntxent(rows, cols, row_index, float(temperature), bool(decoupled), axis_name)


def _stacked_ntxent_parts(z: jax.Array, temperature: float, decoupled: bool):
  """Per-row losses of the stacked unit rows `z` (`[2B, D]`, rows = columns) and a thunk for
  the gradient of their mean.

  With `e_ij = exp(s_ij/t - c_i)` on the denominator's columns and `r_i = Σ_j e_ij`, the
  softmax is `P_ij = e_ij / r_i`. With the constant shift `c_i = 1/t` `e` is symmetric and
  `P + Pᵀ = e ⊙ (1/r_i + 1/r_j)` needs no transpose; at smaller t the shift is the row max
  and `Pᵀ_ij = exp(s_ij/t - lse_j)` is recomputed.
  """
  n = z.shape[0]
  t = temperature
  index = jnp.arange(n)
  is_positive = index[None, :] == (index[:, None] + n // 2) % n
  in_denominator = index[:, None] != index[None, :]
  if decoupled:
    in_denominator &= ~is_positive
  sims = z @ z.T
  constant_shift = t >= CONSTANT_SHIFT_MIN_TEMPERATURE
  if constant_shift:
    shift = jnp.full((n, 1), 1.0 / t, z.dtype)
  else:
    shift = jnp.max(jnp.where(in_denominator, sims / t, -jnp.inf), axis=1, keepdims=True)
  e = jnp.where(in_denominator, jnp.exp(sims / t - shift), 0.0)
  r = jnp.sum(e, axis=1)
  r_neg = r if decoupled else jnp.sum(jnp.where(is_positive, 0.0, e), axis=1)
  pos_sim = jnp.sum(z * jnp.roll(z, n // 2, axis=0), axis=1)
  log_ratio = shift[:, 0] - pos_sim / t + jnp.log(jnp.maximum(r_neg, jnp.finfo(r.dtype).tiny))
  per_row = log_ratio if decoupled else jax.nn.softplus(log_ratio)

  def gradient():
    inv_r = 1.0 / r
    off_positive = jnp.ones_like(r) if decoupled else r_neg * inv_r
    if constant_shift:
      negative_part = e * (inv_r[:, None] + inv_r[None, :])
    else:
      lse = shift[:, 0] + jnp.log(r)
      negative_part = e * inv_r[:, None] + jnp.where(in_denominator,
                                                     jnp.exp(sims / t - lse[None, :]), 0.0)
    both = jnp.where(is_positive, -(off_positive[:, None] + off_positive[None, :]),
                     negative_part)
    return both @ z / (n * t)

  return per_row, gradient


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _stacked_ntxent(z, temperature, decoupled):
  return jnp.mean(_stacked_ntxent_parts(z, temperature, decoupled)[0])


@_stacked_ntxent.defjvp
def _stacked_ntxent_jvp(temperature, decoupled, primals, tangents):
  (z,), (z_dot,) = primals, tangents
  per_row, gradient = _stacked_ntxent_parts(z, temperature, decoupled)
  return jnp.mean(per_row), jnp.sum(gradient() * z_dot)


def stacked_ntxent(z: jax.Array, *, temperature: float, decoupled: bool = False) -> jax.Array:
  """Mean NT-Xent `mean_i l_i` of the stacked unit rows `z = [z1; z2]` (`[2B, D]`), each row
  scored against all rows (one device); differentiable in forward and reverse mode."""
  return _stacked_ntxent(z, float(temperature), bool(decoupled))


def ntxent_mean(rows: jax.Array, cols: jax.Array, row_index: jax.Array, *, temperature: float,
                decoupled: bool = False, axis_name: Optional[str] = None) -> jax.Array:
  """Global mean NT-Xent `psum(Σ_i l_i) / 2B` of the slab (arguments as in `sharded_ntxent`).

  Without `axis_name`, or on a data axis of one device, the columns are the rows and the
  symmetric `stacked_ntxent` is used; otherwise `sharded_ntxent`. Both take one matmul
  forward and one backward.
  """
  if axis_name is None:
    return stacked_ntxent(rows, temperature=temperature, decoupled=decoupled)
  if jax.lax.axis_size(axis_name) == 1:
    return jax.lax.psum(stacked_ntxent(rows, temperature=temperature, decoupled=decoupled),
                        axis_name)
  return sharded_ntxent(rows, cols, row_index, temperature=temperature, axis_name=axis_name,
                        decoupled=decoupled)
