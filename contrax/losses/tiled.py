"""Memory-efficient exact InfoNCE (`contrax.losses.infonce`'s formula): tiles on one device, a
ring across devices.

The dense loss builds the `[2b, 2B]` similarity slab; at 2B = 262,144 embeddings that is
256 GiB in float32. Here the same loss is computed block by block, never holding more than
one `T × T` tile of similarities (the approach of Inf-CL, Cheng et al. 2024,
arXiv 2410.17243):

* Every quantity the InfoNCE family needs from the slab is a masked log-sum-exp over each
  anchor's negatives, `L_k(i) = log sum_{j neg of i} exp(c_k s_ij)` for one or two
  scales `c_k` (1/t; or (1+beta)/t and beta/t). It is accumulated with an online (streaming)
  log-sum-exp over column tiles:
  a running maximum `m` and a running sum `S` rescaled as `S <- S e^{m - m'} + sum e^{x - m'}`.
* The backward pass is a `jax.custom_vjp` that recomputes each tile instead of storing it:
  with cotangents `g_k(i)` of `L_k(i)` and `p_k(i, j) = exp(c_k s_ij - L_k(i))`,

      P_ij = dLoss/ds_ij = sum_k g_k(i) c_k p_k(i, j)      (0 on self, positive, padding)

  so the gradient of the stacked embeddings is `P z` (as anchors) plus `P^T z` (as
  columns), accumulated tile by tile. Memory is O(2B · D + T²).
* A device's own block is symmetric (s_ij = s_ji): each off-diagonal tile pair is computed
  once and feeds the log-sum-exps of its rows and of its columns (forward), and both
  gradient terms (backward). One forward + backward then costs two `[2B, 2B] x D` products'
  worth of tile matmuls, against three for the dense loss.
* HCL weights `w_ij = softmax_j(beta s_ij / t)` (Robinson et al. 2021) factor into two such
  log-sum-exps: `log sum_j w_ij e^{s_ij/t} = L_{(1+beta)/t}(i) - L_{beta/t}(i)`; debiasing (tau+,
  Chuang et al. 2020) and the decoupled form (Yeh et al. 2022) act on the per-row values
  and are differentiated by ordinary autodiff.
* With `axis_name` (inside `jax.shard_map`) the columns form a ring: each device keeps its
  local anchors, and the column blocks `[z1_d; z2_d]` travel from device to device with
  `jax.lax.ppermute`. In the backward pass a block's gradient accumulator travels with it
  and makes one more hop to return to its owner. No device ever holds the global embedding
  matrix or the global similarity slab; the result equals the single-device loss on the
  concatenated batch.

Tile sizes need not divide the batch (padding is masked). The value and gradients equal
`infonce(..., implementation="dense")` up to float32 rounding.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks
from contrax import pairs as pairs_lib
from contrax._numerics import NEG_INF
from contrax.losses._common import debiased_log_negatives

DEFAULT_TILE_SIZE = 2048


class _Plan(NamedTuple):
  """Static description of one streamed log-sum-exp (hashable: a `nondiff_argnum`)."""
  scales: tuple  # c_k: L_k(i) = log sum_j exp(c_k s_ij)
  axis_name: Optional[str]
  tile: int


def _tiles(x: jax.Array, tile: int, fill) -> jax.Array:
  """Pad axis 0 of `x` with `fill` to a multiple of `tile` and split it: `[n_tiles, tile, ...]`."""
  pad = (-x.shape[0]) % tile
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=fill)
  return x.reshape((-1, tile) + x.shape[1:])


def _untile(x: jax.Array, n: int) -> jax.Array:
  return x.reshape((-1,) + x.shape[2:])[:n]


def _take(x: jax.Array, i: jax.Array) -> jax.Array:
  return jax.lax.dynamic_index_in_dim(x, i, keepdims=False)


def _put(x: jax.Array, value: jax.Array, i: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_index_in_dim(x, value, i, 0)


def _block_index(owner: jax.Array, b: int, big_b: int) -> jax.Array:
  """Global stacked index of the rows `[z1_owner; z2_owner]` of device `owner` (row k of the
  global stack `[z1; z2]` is image k mod B, view k // B)."""
  k = jnp.arange(2 * b)
  return owner * b + k + jnp.where(k < b, 0, big_b - b)


def _masked_sims(rows, row_index, cols, col_index, big_b: int) -> jax.Array:
  """One tile of `s_ij` with -inf off the negatives (self, positive and padding: index -1)."""
  i, j = row_index[:, None], col_index[None, :]
  negative = (i >= 0) & (j >= 0) & (j != i) & (j != (i + big_b) % (2 * big_b))
  return jnp.where(negative, rows @ cols.T, NEG_INF)


def _expand(v: jax.Array, axis: int) -> jax.Array:
  return v[:, None] if axis == 1 else v[None, :]


def _fold(m, s, masked, scales, axis: int):
  """Online log-sum-exp: fold a masked tile into the running max and sum `[K, T]` of its
  rows (axis=1) or of its columns (axis=0), for every scale c_k."""
  new_m, new_s = [], []
  for k, c in enumerate(scales):
    x = c * masked
    m_k = jnp.maximum(m[k], jnp.max(x, axis=axis))
    shift = jnp.where(jnp.isfinite(m_k), m_k, 0.0)
    new_s.append(s[k] * jnp.exp(m[k] - shift)
                 + jnp.sum(jnp.exp(x - _expand(shift, axis)), axis=axis))
    new_m.append(m_k)
  return jnp.stack(new_m), jnp.stack(new_s)


def _cotangent(masked, lse, gc, scales, axis: int) -> jax.Array:
  """d loss / d logit on a tile through the log-sum-exps of its rows (axis=1) or columns
  (axis=0): `sum_k gc_k exp(c_k s - lse_k)`, exactly 0 off the negatives."""
  # start: sum's default int 0 as a (weak-typed) Array, so that the sum is typed an Array.
  return sum((_expand(gc[k], axis) * jnp.exp(c * masked - _expand(lse[k], axis))
              for k, c in enumerate(scales)), start=jnp.asarray(0))


def _upper_pairs(n_tiles: int):
  i, j = np.triu_indices(n_tiles, 1)
  return jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32)


def _stream_self(plan: _Plan, big_b: int, tiles, state):
  """Fold the device's own block (anchors = columns) into `state`, using s_ij = s_ji.

  Diagonal tiles update their rows; each off-diagonal tile (i < j) is computed once and
  updates rows of tile i along axis 1 and rows of tile j along axis 0.
  tiles: (rows, global index), `[n_tiles, T, ...]`; state: (m, s) `[n_tiles, K, T]`.
  """
  z, index = tiles

  def diagonal(_, x):
    r, idx, m, s = x
    return None, _fold(m, s, _masked_sims(r, idx, r, idx, big_b), plan.scales, 1)

  _, state = jax.lax.scan(diagonal, None, (z, index) + tuple(state))

  def off_diagonal(state, ij):
    (m, s), (i, j) = state, ij
    masked = _masked_sims(_take(z, i), _take(index, i), _take(z, j), _take(index, j), big_b)
    m_i, s_i = _fold(_take(m, i), _take(s, i), masked, plan.scales, 1)
    m_j, s_j = _fold(_take(m, j), _take(s, j), masked, plan.scales, 0)
    return (_put(_put(m, m_i, i), m_j, j), _put(_put(s, s_i, i), s_j, j)), None

  state, _ = jax.lax.scan(off_diagonal, state, _upper_pairs(z.shape[0]))
  return state


def _stream_cross(plan: _Plan, big_b: int, tiles, state, cols, col_index):
  """Fold another device's block of columns (`[n_tiles, T, D]`, its global index) into state."""
  def per_row_tile(_, x):
    r, idx, m, s = x

    def per_col_tile(carry, y):
      return _fold(*carry, _masked_sims(r, idx, *y, big_b), plan.scales, 1), None

    state, _ = jax.lax.scan(per_col_tile, (m, s), (cols, col_index))
    return None, state

  _, state = jax.lax.scan(per_row_tile, None, tuple(tiles) + tuple(state))
  return state


def _grad_self(plan: _Plan, big_b: int, tiles, lse, gc, dz):
  """Add the own block's `Q z` to `dz` (`[n_tiles, T, D]`), Q = row + column cotangents.

  The gradient of z_i is `sum_j (P_ij + P_ji) z_j`; for a tile pair (i, j) both `P_ij` and
  `P_ji^T` come from the one recomputed tile of similarities.
  """
  z, index = tiles

  def both_sides(masked, lse_i, gc_i, lse_j, gc_j):
    return (_cotangent(masked, lse_i, gc_i, plan.scales, 1)
            + _cotangent(masked, lse_j, gc_j, plan.scales, 0))

  def diagonal(_, x):
    r, idx, l, g, d = x
    return None, d + both_sides(_masked_sims(r, idx, r, idx, big_b), l, g, l, g) @ r

  _, dz = jax.lax.scan(diagonal, None, (z, index, lse, gc, dz))

  def off_diagonal(dz, ij):
    i, j = ij
    z_i, z_j = _take(z, i), _take(z, j)
    masked = _masked_sims(z_i, _take(index, i), z_j, _take(index, j), big_b)
    q = both_sides(masked, _take(lse, i), _take(gc, i), _take(lse, j), _take(gc, j))
    dz = _put(dz, _take(dz, i) + q @ z_j, i)
    return _put(dz, _take(dz, j) + q.T @ z_i, j), None

  dz, _ = jax.lax.scan(off_diagonal, dz, _upper_pairs(z.shape[0]))
  return dz


def _grad_cross(plan: _Plan, big_b: int, tiles, lse, gc, drow, cols, col_index, dcols):
  """Add a visiting block's `P z_cols` to `drow` and `P^T z_rows` to its accumulator `dcols`."""
  def per_row_tile(dcols, x):
    r, idx, l, g, d = x

    def per_col_tile(d, y):
      c, c_idx, dc = y
      p = _cotangent(_masked_sims(r, idx, c, c_idx, big_b), l, g, plan.scales, 1)
      return d + p @ c, dc + p.T @ r

    d, dcols = jax.lax.scan(per_col_tile, d, (cols, col_index, dcols))
    return dcols, d

  dcols, drow = jax.lax.scan(per_row_tile, dcols, tuple(tiles) + (lse, gc, drow))
  return drow, dcols


def _ring(axis_name: Optional[str]):
  """(device index, number of devices, pass-to-next-device) for the data axis."""
  if axis_name is None:
    return jnp.zeros((), jnp.int32), 1, lambda x: x
  n = jax.lax.axis_size(axis_name)
  perm = [(d, (d + 1) % n) for d in range(n)]
  return jax.lax.axis_index(axis_name), n, lambda x: jax.lax.ppermute(x, axis_name, perm)


def _varying(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Mark a constant as differing across devices, as a loop carry mixing in local data must."""
  return x if axis_name is None else jax.lax.pcast(x, axis_name, to="varying")


class _Block(NamedTuple):
  """This device's stacked embeddings, tiled: anchors and its block of the global columns."""
  tiles: tuple  # (z, global index), each [n_tiles, T, ...]
  me: jax.Array
  n_devices: int
  send: Callable[[jax.Array], jax.Array]  # pass to the next device on the ring
  b: int

  @property
  def big_b(self) -> int:
    return self.b * self.n_devices

  def column_index(self, owner: jax.Array) -> jax.Array:
    return _tiles(_block_index(owner, self.b, self.big_b), self.tiles[0].shape[1], -1)


def _block(plan: _Plan, z: jax.Array) -> _Block:
  me, n, send = _ring(plan.axis_name)
  b = z.shape[0] // 2
  tiles = (_tiles(z, plan.tile, 0), _tiles(_block_index(me, b, b * n), plan.tile, -1))
  return _Block(tiles, me, n, send, b)


def _lse_forward(plan: _Plan, z: jax.Array) -> jax.Array:
  blk = _block(plan, z)
  shape = (blk.tiles[0].shape[0], len(plan.scales), plan.tile)
  state = (_varying(jnp.full(shape, NEG_INF, z.dtype), plan.axis_name),
           _varying(jnp.zeros(shape, z.dtype), plan.axis_name))
  state = _stream_self(plan, blk.big_b, blk.tiles, state)

  def visit(i, cols, state):  # cols: the block of device me - i
    owner = (blk.me - i) % blk.n_devices
    return _stream_cross(plan, blk.big_b, blk.tiles, state, cols, blk.column_index(owner))

  def step(i, carry):
    cols, state = carry
    return blk.send(cols), visit(i, cols, state)  # the next block travels during the compute

  if blk.n_devices > 1:
    last = blk.n_devices - 1
    cols, state = jax.lax.fori_loop(1, last, step, (blk.send(blk.tiles[0]), state))
    state = visit(last, cols, state)
  m, s = state
  lse = jnp.moveaxis(m + jnp.log(s), 1, 0)  # [K, n_tiles, T]
  return lse.reshape(len(plan.scales), -1)[:, :z.shape[0]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _negative_lse(plan: _Plan, z: jax.Array) -> jax.Array:
  """`[K, 2b]`: `log sum_{j neg of i} exp(c_k s_ij)` for this device's stacked anchors.

  `z` holds the local stacked, L2-normalised embeddings `[z1; z2]`, which are at once this
  device's anchors and its block of the global columns.
  """
  return _lse_forward(plan, z)


def _negative_lse_fwd(plan: _Plan, z: jax.Array):
  lse = _lse_forward(plan, z)
  return lse, (z, lse)


def _negative_lse_bwd(plan: _Plan, residuals, g):
  z, lse = residuals
  blk = _block(plan, z)

  def per_tile(x):  # [K, 2b] -> [n_tiles, K, T], padding 0
    return jnp.moveaxis(_tiles(x.T, plan.tile, 0), 2, 1)

  lse = per_tile(jnp.where(jnp.isfinite(lse), lse, 0.0))
  gc = per_tile(g * jnp.asarray(plan.scales, z.dtype)[:, None])
  dz = _grad_self(plan, blk.big_b, blk.tiles, lse, gc, jnp.zeros_like(blk.tiles[0]))

  def visit(i, cols, dcols, drow):  # cols: the block of device me - i; dcols: its gradient
    owner = (blk.me - i) % blk.n_devices
    return _grad_cross(plan, blk.big_b, blk.tiles, lse, gc, drow, cols,
                       blk.column_index(owner), dcols)

  def step(i, carry):
    cols, dcols, drow = carry
    drow, dcols = visit(i, cols, dcols, drow)
    return blk.send(cols), blk.send(dcols), drow  # a block's gradient travels with it

  if blk.n_devices > 1:
    last = blk.n_devices - 1
    carry = (blk.send(blk.tiles[0]), jnp.zeros_like(dz), dz)
    cols, dcols, dz = jax.lax.fori_loop(1, last, step, carry)
    dz, dcols = visit(last, cols, dcols, dz)
    dz = dz + blk.send(dcols)  # one more hop brings each block's gradient home
  return (_untile(dz, z.shape[0]),)


_negative_lse.defvjp(_negative_lse_fwd, _negative_lse_bwd)


def tiled_infonce(z1: jax.Array, z2: jax.Array, *, temperature: float = 0.5,
                  tau_plus: float = 0.0, beta: float = 0.0, decoupled: bool = False,
                  axis_name: Optional[str] = None,
                  tile_size: int = DEFAULT_TILE_SIZE) -> jax.Array:
  """Exact InfoNCE with memory linear in the batch; returns a scalar.

  The same loss as `infonce` with uniform (`beta = 0`) or HCL (`beta > 0`) weights, with
  the negatives' log-sum-exp streamed over tiles (module docstring):

      log neg_i = logsumexp_{j neg} s_ij/t                                  (beta = 0)
      log neg_i = log N + logsumexp_{j neg} (1+beta) s_ij/t
                        - logsumexp_{j neg} beta s_ij/t                     (HCL, beta > 0)
      Ng_i = max((neg_i - tau_plus N pos_i) / (1 - tau_plus), N e^{-1/t})   (tau_plus > 0)
      l_i  = log(pos_i + Ng_i) - s_{i,p(i)}/t      (decoupled: log Ng_i - s_{i,p(i)}/t)

  HCL's weights are differentiated, as the official HCL code does: value and gradient equal
  `infonce_pairs(pairs, weights=contrax.weights.hcl(pairs, beta=beta, temperature=t))`
  without a stop-gradient.

  Args:
    z1, z2: `[b, D]` embeddings of the two views (L2-normalised here).
    temperature: t > 0; may be traced (a learnable temperature): it enters as the scale
      `1/sqrt(t)` of the embeddings, so the tiles' static plan holds only (1 + beta, beta).
    tau_plus: debiasing class prior in [0, 1) (Chuang et al. 2020, arXiv 2007.00224).
    beta: HCL hardness >= 0 (Robinson et al. 2021, arXiv 2010.04592); 0 is uniform.
    decoupled: drop the positive from the denominator (Yeh et al. 2022, arXiv 2110.06848).
    axis_name: data axis under `shard_map`: the columns travel around a ring of devices.
    tile_size: edge T of the square similarity tiles, clipped to the local batch 2b; it
      need not divide 2b. Peak memory beyond the embeddings is a few T × T buffers.
      Larger tiles run faster on CPU (2048 is a good default there).

  Example:
    >>> z1 = jnp.eye(4); z2 = jnp.eye(4)
    >>> float(tiled_infonce(z1, z2, temperature=0.5, tile_size=3)) > 0
    True
  """
  t = _checks.check_temperature(temperature)
  tau = _checks.check_tau_plus(tau_plus)
  beta = _checks.non_negative("beta", beta)
  tile = _checks.positive_int("tile_size", tile_size)
  pairs_lib.check_views(z1, z2)
  pairs_lib.check_finite("z1", z1)
  pairs_lib.check_finite("z2", z2)
  n_devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  b = z1.shape[0]
  num_global_rows = 2 * b * n_devices
  num_neg = num_global_rows - 2
  if num_neg < 1:
    raise ValueError("InfoNCE needs at least one negative: use a global batch of >= 2 images")
  z1n, z2n = pairs_lib.l2_normalize(z1), pairs_lib.l2_normalize(z2)
  # c s_ij / t = c (z_i / sqrt t) . (z_j / sqrt t): the temperature scales the embeddings.
  z = jnp.concatenate([z1n, z2n], axis=0) * jax.lax.rsqrt(jnp.asarray(t, z1n.dtype))
  scales = (1.0,) if beta == 0.0 else (1.0 + beta, beta)
  plan = _Plan(scales, axis_name, min(tile, 2 * b))
  lse = _negative_lse(plan, z)
  log_pos = jnp.tile(jnp.sum(z1n * z2n, axis=1) / t, 2)
  log_neg = lse[0] if beta == 0.0 else math.log(num_neg) + lse[0] - lse[1]
  log_ng = debiased_log_negatives(log_neg, log_pos, tau, num_neg, t)
  if decoupled:
    per_row = log_ng - log_pos
  else:
    per_row = jax.nn.softplus(log_ng - log_pos)  # log(1 + Ng/pos), as the dense loss
  total = jnp.sum(per_row)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  return total / num_global_rows
