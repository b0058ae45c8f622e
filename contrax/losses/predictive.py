"""Objectives of the methods with a predictor: BYOL, SimSiam and MoCo v3.

An online network (encoder f, projector g) and a predictor q turn view v of image i into a
prediction `p_v,i = q(g(f(x_v,i)))`; a target network turns the other view into a target
`t_v,i` (BYOL: an EMA of the online network; SimSiam: the online network itself; MoCo v3: a
momentum encoder, whose targets are called keys). With `x̂ = x / ‖x‖` and
`cos(a, b) = âᵀb̂`, over the B images of the global batch:

    BYOL     L = (1/B) Σ_i [ ‖p̂1_i − t̂2_i‖² + ‖p̂2_i − t̂1_i‖² ]
               = (1/B) Σ_i [ (2 − 2 cos(p1_i, t2_i)) + (2 − 2 cos(p2_i, t1_i)) ]
    SimSiam  L = −(1/2B) Σ_i [ cos(p1_i, z2_i) + cos(p2_i, z1_i) ]
    MoCo v3  L = 2τ [ ctr(q1, k2) + ctr(q2, k1) ],
             ctr(q, k) = (1/B) Σ_i −log( exp(q̂_iᵀk̂_i / τ) / Σ_j exp(q̂_iᵀk̂_j / τ) )

References: Grill et al. 2020, "Bootstrap your own latent: a new approach to self-supervised
learning" (NeurIPS; eq. 2 and the symmetrised L + L̃); Chen & He 2021, "Exploring simple
Siamese representation learning" (CVPR; eq. 3-4); Chen, Xie & He 2021, "An empirical study of
training self-supervised vision transformers" (ICCV; eq. 1 and the official code's
symmetrised loss scaled by 2τ). `ctr` is `contrax.losses.query_key.query_key_infonce` (no queue, the
batch's other keys as negatives).

The functions are pure and differentiate every argument: the stop-gradient on the targets
(`sg(t)`, `sg(z)`, `sg(k)` in the papers) is the caller's explicit `jax.lax.stop_gradient`
(the methods in `contrax.methods` apply it). With `axis_name` (inside `shard_map`, each
device holding its rows of the batch) the value and the gradient are those of the global
batch: a local sum, one psum, divided by the global B.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from contrax import _checks
from contrax import pairs as pairs_lib
from contrax.losses.query_key import query_key_infonce

__all__ = ["cosine", "byol_loss", "simsiam_loss", "moco_v3_loss"]


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """Row-wise cosine similarity `âᵢᵀb̂ᵢ` of `[n, D]` arrays (`pairs.l2_normalize`: finite
  with a finite gradient at the zero vector)."""
  return jnp.sum(pairs_lib.l2_normalize(a) * pairs_lib.l2_normalize(b), axis=-1)


def _global_mean(per_row: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """Mean over the global batch of a per-local-row quantity (a psum of the local sums)."""
  total, n = jnp.sum(per_row), per_row.shape[0]
  if axis_name is not None:
    total, n = jax.lax.psum(total, axis_name), n * jax.lax.axis_size(axis_name)
  return total / n


def _check_four(names, *arrays) -> None:
  for name, x in zip(names, arrays):
    _checks.rank(name, x, 2)
    pairs_lib.check_finite(name, x)
  _checks.same_shape(names, *arrays)
  if arrays[0].shape[0] < 1:
    raise ValueError(f"{names[0]} needs at least one row, got shape {arrays[0].shape}")


def byol_loss(p1: jax.Array, p2: jax.Array, t1: jax.Array, t2: jax.Array, *,
              axis_name: Optional[str] = None) -> jax.Array:
  """BYOL's symmetrised normalised MSE (module docstring): in [0, 8], 0 when each prediction
  points along the other view's target.

  Args:
    p1, p2: `[b, D]` the predictor's outputs on views 1 and 2 (this device's rows).
    t1, t2: `[b, D]` the target network's projections of views 1 and 2 (BYOL stops their
      gradient: the caller's `jax.lax.stop_gradient`).
    axis_name: the data axis under `shard_map` (global mean), or None.

  Example:
    >>> z = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> float(byol_loss(z, z, 3 * z, z))
    0.0
  """
  _check_four(("p1", "p2", "t1", "t2"), p1, p2, t1, t2)
  per_row = (2.0 - 2.0 * cosine(p1, t2)) + (2.0 - 2.0 * cosine(p2, t1))
  return _global_mean(per_row, axis_name)


def simsiam_loss(p1: jax.Array, p2: jax.Array, z1: jax.Array, z2: jax.Array, *,
                 axis_name: Optional[str] = None) -> jax.Array:
  """SimSiam's symmetrised negative cosine (module docstring): in [−1, 1], −1 when each
  prediction points along the other view's projection.

  Args:
    p1, p2: `[b, D]` the predictor's outputs on views 1 and 2.
    z1, z2: `[b, D]` the projections of views 1 and 2 (SimSiam stops their gradient in the
      loss: the caller's `jax.lax.stop_gradient`).
    axis_name: the data axis under `shard_map` (global mean), or None.
  """
  _check_four(("p1", "p2", "z1", "z2"), p1, p2, z1, z2)
  per_row = -0.5 * (cosine(p1, z2) + cosine(p2, z1))
  return _global_mean(per_row, axis_name)


def moco_v3_loss(q1: jax.Array, q2: jax.Array, k1: jax.Array, k2: jax.Array, *,
                 temperature=0.2, axis_name: Optional[str] = None) -> jax.Array:
  """MoCo v3's symmetrised InfoNCE `2τ [ctr(q1, k2) + ctr(q2, k1)]` (module docstring).

  Args:
    q1, q2: `[b, D]` queries: the predictor's outputs on views 1 and 2.
    k1, k2: `[b, D]` keys: the momentum encoder's projections of views 1 and 2 (MoCo v3
      stops their gradient: the caller's `jax.lax.stop_gradient`); with `axis_name` every
      local query scores the keys of the whole global batch (all-gathered).
    temperature: τ > 0 (0.2 in the paper; the official ResNet-50 recipe uses 1.0).
    axis_name: the data axis under `shard_map` (global batch), or None.
  """
  _check_four(("q1", "q2", "k1", "k2"), q1, q2, k1, k2)
  t = _checks.check_temperature(temperature)
  return 2.0 * t * (query_key_infonce(q1, k2, temperature=t, axis_name=axis_name)
                    + query_key_infonce(q2, k1, temperature=t, axis_name=axis_name))
