"""NT-Xent with hand-written derivatives: the path every uniform-weight InfoNCE takes.

`ntxent_mean`: the global mean loss of the devices' slabs (local rows × global columns)
under `shard_map`, or of the stacked batch on one device (rows = columns). The slab is
never held whole: it is swept in blocks of rows (`ROW_BLOCK_ELEMENTS` numbers each), once
forward (similarities, exponentials, row sums) and once backward (the similarities again,
then the block's gradient matmul), so memory is linear in 2B at a fixed block and a block's
arrays stay in cache.

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

Why recompute the similarities instead of keeping the `[2b, 2B]` exponentials from the
forward sweep: on CPU, writing a fresh `[2B, 2B]` float32 array costs more than the second
`[block, D] @ [D, 2B]` matmul (page faults on first touch of a new buffer, and passes over
memory that does not fit in cache). At B = 4096, D = 128 on a 2-core CPU
(`experiments/benchmarks/losses.py`, two alternating runs): 255 / 267 -> 228 / 251 ms per
forward + backward on 1 device, 324 / 328 -> 294 / 306 ms on 8 virtual devices; compiled
temporaries 272 -> 40 MiB. (Visiting only half of the symmetric matrix in square blocks, with
the columns' share sent back by a reduce-scatter, was slower there: 361 ms on 1 device, the
`[512, 512]` blocks' matmuls running well below the speed of the `[256, 2B]` ones.)
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

# Above this temperature every exp((s - 1)/t) with |s| <= 1 is a normal float32 (>= e^-80), so
# the constant shift 1/t replaces the per-row max of the log-sum-exp (one reduction saved).
CONSTANT_SHIFT_MIN_TEMPERATURE = 2.0 / 80.0


def _gather_column_stats(stats: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Per-row statistics `[2b, k]` of every device, in global column order `[2B, k]`.

  Each device's rows are its `[z1_loc; z2_loc]` blocks and the devices come in axis order
  (`contrax.pairs.build`'s layout), so the device-major gather `[n, 2, b, k]` is reordered to
  `[2, n, b, k]` by a static reshape, as `build` reorders the columns. Without `axis_name` the
  rows are the columns and `stats` is returned as it is."""
  if axis_name is None:
    return stats
  gathered = jax.lax.all_gather(stats, axis_name, axis=0)  # [n, 2b, k]
  n, two_b, k = gathered.shape
  return gathered.reshape(n, 2, two_b // 2, k).swapaxes(0, 1).reshape(n * two_b, k)


# Numbers in one block's `[rows, 2B]` arrays (8 MiB of float32): at B = 4096, 256 rows. The
# fastest of 2^20 .. 2^23 at B = 4096 on a 2-core CPU (2^21 and 2^22 within noise).
ROW_BLOCK_ELEMENTS = 1 << 21


def _row_blocks(num_rows: int, num_cols: int) -> tuple[int, int]:
  """(number of blocks, rows per block) so that a block's `[rows, 2B]` arrays hold at most
  `ROW_BLOCK_ELEMENTS` numbers (one row at the least); one block when the whole slab is
  that small. The rows are padded to `blocks × rows per block` and the padding dropped."""
  per_block = max(1, min(num_rows, ROW_BLOCK_ELEMENTS // num_cols))
  count = -(-num_rows // per_block)
  return count, -(-num_rows // count)


def _parts(rows, cols, row_index, temperature, decoupled, axis_name):
  """Per-row losses of the slab and a thunk for the gradient of the global mean loss with
  respect to this device's rows, the columns' share included (`cols = all_gather(rows)`, or
  `cols = rows` without `axis_name`).

  The gradient of `L = Σ_i l_i / 2B` for global row m is `(Σ_j Q_mj z_j + Σ_i Q_im z_i) / 2B`.
  The first sum is this device's slab row times the columns. The second needs column m of Q
  over all rows; `s` is symmetric, so off the positive it is `P_im = exp(s_mi/t − lse_i)`, read
  from this device's own slab row m with the gathered log-sum-exps `lse_i` (with the constant
  shift, `e_mi / r_i`), and at the positive `Q_{p(m),m} = −(1 − P_{p(m),m})/t` with the
  gathered `1 − P`. The row gradient is then, block by block, one `[block, 2B] @ [2B, D]`
  matmul contracting over the columns, after one all-gather of two numbers per row: no
  transposed matmul and no all-reduce of a `[2B, D]` column cotangent.
  """
  t = temperature
  num_rows, num_cols = rows.shape[0], cols.shape[0]
  count, per_block = _row_blocks(num_rows, num_cols)
  pad = count * per_block - num_rows
  blocked_rows = jnp.pad(rows, ((0, pad), (0, 0))).reshape(count, per_block, -1)
  blocked_index = jnp.pad(row_index, (0, pad)).reshape(count, per_block)
  col = jnp.arange(num_cols)
  constant_shift = t >= CONSTANT_SHIFT_MIN_TEMPERATURE

  def geometry(block_rows, block_index):
    pos_index = (block_index + num_cols // 2) % num_cols
    is_positive = col[None, :] == pos_index[:, None]
    in_denominator = col[None, :] != block_index[:, None]
    if decoupled:
      in_denominator &= ~is_positive
    sims = block_rows @ cols.T  # [block, 2B]: computed in each sweep, never stored whole
    return pos_index, is_positive, in_denominator & ~is_positive, in_denominator, sims

  def forward(args):
    block_rows, block_index = args
    pos_index, is_positive, is_negative, in_denominator, sims = geometry(block_rows, block_index)
    if constant_shift:
      shift = jnp.full((block_rows.shape[0],), 1.0 / t, rows.dtype)
    else:
      shift = jnp.max(jnp.where(in_denominator, sims / t, -jnp.inf), axis=1)
    # Only the negatives are exponentiated in the [block, 2B] pass; the positive's term is
    # added from its similarity (r = r_neg + e_pos, a sum of positives: no cancellation, and
    # 1 - P_ip = r_neg / r keeps its precision when the positive dominates).
    r_neg = jnp.sum(jnp.where(is_negative, jnp.exp(sims / t - shift[:, None]), 0.0), axis=1)
    pos_sim = jnp.sum(block_rows * jnp.take(cols, pos_index, axis=0), axis=1)
    return shift, r_neg, pos_sim

  shift, r_neg, pos_sim = (x.reshape(-1)[:num_rows] for x in
                           jax.lax.map(forward, (blocked_rows, blocked_index)))
  r = r_neg if decoupled else r_neg + jnp.exp(pos_sim / t - shift)
  log_ratio = shift - pos_sim / t + jnp.log(jnp.maximum(r_neg, jnp.finfo(r.dtype).tiny))
  per_row = log_ratio if decoupled else jax.nn.softplus(log_ratio)

  def gradient():
    inv_r = 1.0 / r
    # Q_ip = -(1 - P_ip) = -r_neg / r (decoupled: -1); e / r is the softmax elsewhere.
    off_positive = jnp.ones_like(r) if decoupled else r_neg * inv_r
    own = inv_r if constant_shift else shift + jnp.log(r)
    column = _gather_column_stats(jnp.stack([own, off_positive], axis=1), axis_name)
    row_stats = jnp.pad(jnp.stack([inv_r, off_positive, shift], axis=1), ((0, pad), (0, 0)))

    def backward(args):
      block_rows, block_index, stats = args
      block_inv_r, block_off, block_shift = stats[:, 0], stats[:, 1], stats[:, 2]
      _, is_positive, is_negative, _, sims = geometry(block_rows, block_index)
      e = jnp.where(is_negative, jnp.exp(sims / t - block_shift[:, None]), 0.0)
      if constant_shift:  # e is symmetric off the positives: P_im = e_mi / r_i
        negative_part = e * (block_inv_r[:, None] + column[None, :, 0])
      else:
        negative_part = e * block_inv_r[:, None] + jnp.where(
            is_negative, jnp.exp(sims / t - column[None, :, 0]), 0.0)
      both = jnp.where(is_positive, -(block_off[:, None] + column[None, :, 1]), negative_part)
      return both @ cols

    grads = jax.lax.map(backward, (blocked_rows, blocked_index,
                                   row_stats.reshape(count, per_block, 3)))
    return grads.reshape(count * per_block, -1)[:num_rows] / (num_cols * t)

  return per_row, gradient


def _total(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _ntxent(rows, cols, row_index, temperature, decoupled, axis_name):
  per_row, _ = _parts(rows, cols, row_index, temperature, decoupled, axis_name)
  return _total(jnp.sum(per_row), axis_name) / cols.shape[0]


@_ntxent.defjvp
def _ntxent_jvp(temperature, decoupled, axis_name, primals, tangents):
  # The tangent of the global mean is the sum over devices of Σ_rows G · rows_dot, G being the
  # full gradient of each device's rows (their columns' share included), so the columns'
  # tangent is not read: `cols` must be the all-gather of the devices' `rows` (the contract of
  # `ntxent_mean`). Reverse mode then sends the columns no cotangent.
  rows, cols, row_index = primals
  per_row, gradient = _parts(rows, cols, row_index, temperature, decoupled, axis_name)
  value = _total(jnp.sum(per_row), axis_name) / cols.shape[0]
  return value, _total(jnp.sum(gradient() * tangents[0]), axis_name)


def ntxent_mean(rows: jax.Array, cols: jax.Array, row_index: jax.Array, *, temperature: float,
                decoupled: bool = False, axis_name: Optional[str] = None) -> jax.Array:
  """Global mean NT-Xent `Σ_i l_i / 2B` over every device's rows.

  Args:
    rows: `[2b, D]` this device's unit anchors `[z1_loc; z2_loc]`.
    cols: `[2B, D]` all unit stacked columns `[z1_global; z2_global]`: the all-gather of every
      device's `rows` in axis order (`contrax.pairs.build`); the rows themselves without
      `axis_name`. The derivative counts the columns through the rows and does not read the
      columns' own tangent.
    row_index: `[2b]` integer global index of each local row (its own column).
    temperature: t > 0 (a Python float).
    decoupled: drop the positive from the denominator (Yeh et al. 2022).
    axis_name: the data axis under `shard_map` the columns were gathered over, or None.

  On a data axis of one device the columns are the rows, and the loss is computed as without
  `axis_name`. Finite, with a finite derivative, at every temperature and for every finite
  input; differentiable in forward and reverse mode.
  """
  t, decoupled = float(temperature), bool(decoupled)
  if axis_name is None or jax.lax.axis_size(axis_name) == 1:
    # Row i is column i: a static index lets XLA build the masks from an iota.
    value = _ntxent(rows, rows, jnp.arange(rows.shape[0]), t, decoupled, None)
    return value if axis_name is None else jax.lax.psum(value, axis_name)
  return _ntxent(rows, cols, row_index, t, decoupled, axis_name)
