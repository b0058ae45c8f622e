"""Negative weightings: functions returning row-stochastic weight matrices (SPEC §1, §4, §6).

Every hard-negative method in contrax is "a weighting + the one InfoNCE": a function here
returns `w` of shape `[2b, 2B]` (local anchors × global stacked columns) with zeros on each
anchor's self and positive columns and rows summing to 1 over its N = 2B - 2 negatives; pass
it as `infonce(..., weights=w)`. Gradients flow through `w` unless the caller stops them
(`jax.lax.stop_gradient`), as the official HCL and HCL-OT code does.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from contrax import _checks
from contrax.losses import _layout
from contrax.losses.infonce import NEG_INF, check_temperature


def uniform(z1: jax.Array, z2: jax.Array, *, axis_name: Optional[str] = None) -> jax.Array:
  """`w_ij = 1/N` on every negative: SimCLR / DCL."""
  pairs = _layout.stacked_pairs(z1, z2, axis_name=axis_name, normalize=False)
  return pairs.negative_mask.astype(z1.dtype) / pairs.num_negatives


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Row softmax of `scores` over the True entries of `mask`; exactly 0 elsewhere."""
  return jax.nn.softmax(jnp.where(mask, scores, NEG_INF), axis=1)


def hcl(z1: jax.Array, z2: jax.Array, *, beta: float, temperature: float,
        axis_name: Optional[str] = None) -> jax.Array:
  """HCL weights (Robinson et al. 2021, arXiv 2010.04592): `w_ij = softmax_j(beta s_ij / t)`.

  beta >= 0 is the hardness; beta = 0 gives uniform weights (DCL). Equal to the
  semi-relaxed entropic OT coupling with epsilon = 2t/beta (Jiang et al. 2023).
  """
  beta = _checks.non_negative("beta", beta)
  t = check_temperature(temperature)
  pairs = _layout.stacked_pairs(z1, z2, axis_name=axis_name)
  sims = pairs.rows @ pairs.cols.T
  return masked_softmax(beta * sims / t, pairs.negative_mask)
