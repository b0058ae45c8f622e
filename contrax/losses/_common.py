"""Pieces shared by the dense and the tiled InfoNCE (no imports of other loss modules)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from contrax._numerics import NEG_INF


def check_weights(weights, shape, negative_mask) -> None:
  """Eager check that concrete weights have `shape` and are row-stochastic over negatives.

  Traced weights (inside jit) are checked for shape only.
  """
  if tuple(np.shape(weights)) != tuple(shape):
    raise ValueError(f"weights must have shape {tuple(shape)} (local rows x global columns), "
                     f"got {np.shape(weights)}")
  if isinstance(weights, jax.core.Tracer) or isinstance(negative_mask, jax.core.Tracer):
    return
  w = np.asarray(weights, np.float64)
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError("weights must be finite and non-negative")
  sums = np.sum(np.where(np.asarray(negative_mask), w, 0.0), axis=1)
  if np.any(np.abs(sums - 1.0) > 1e-3):
    worst = int(np.argmax(np.abs(sums - 1.0)))
    raise ValueError("weights must be row-stochastic over each anchor's negatives (rows sum to "
                     "1, self and positive columns excluded); "
                     f"row {worst} sums to {sums[worst]:.6g}")


def debiased_log_negatives(log_neg: jax.Array, log_pos: jax.Array, tau_plus: float,
                           num_negatives: int, temperature) -> jax.Array:
  """`log Ng_i` of the debiased negative term (Chuang et al. 2020) with its clamp:

      Ng_i = max((neg_i - τ⁺ N pos_i) / (1 - τ⁺), N exp(-1/t))    (τ⁺ > 0; Ng_i = neg_i at 0)

  from `log neg_i` and `log pos_i`, in log space (`temperature` may be traced).
  """
  if tau_plus == 0.0:
    return log_neg
  log_floor = math.log(num_negatives) - 1.0 / temperature
  # (neg - tau N pos) / (1 - tau) = neg (1 - r) / (1 - tau), r = tau N pos / neg.
  log_r = math.log(tau_plus * num_negatives) + log_pos - log_neg
  keep = log_r < 0
  one_minus_r = -jnp.expm1(jnp.where(keep, log_r, -1.0))
  log_diff = log_neg + jnp.log(one_minus_r) - math.log1p(-tau_plus)
  return jnp.maximum(jnp.where(keep, log_diff, NEG_INF), log_floor)
