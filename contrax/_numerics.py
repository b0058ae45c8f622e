"""Numerical helpers shared by the weightings and the losses (no contrax imports)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def safe_log(x: jax.Array) -> jax.Array:
  """log(x) with log(0) = -inf and a zero (not NaN) gradient at x = 0."""
  positive = x > 0
  return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), NEG_INF)


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Row softmax of `scores` over the True entries of `mask`; exactly 0 elsewhere."""
  return jax.nn.softmax(jnp.where(mask, scores, NEG_INF), axis=1)
