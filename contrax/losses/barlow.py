"""Barlow Twins and the paper-form losses of Huang et al. used as oracles.

- `barlow_twins`: the practical loss of Zbontar et al., *Barlow Twins: Self-Supervised
  Learning via Redundancy Reduction*, ICML 2021 (arXiv 2103.03230).
- `paper_infonce_one_negative`, `cross_correlation_loss`, `alignment`: the forms analysed by
  Huang, Yi, Zhao, *Towards the Generalization of Contrastive Self-Supervised Learning*,
  ICLR 2023 (arXiv 2111.00743) [P001], with their decompositions
  `L = L1 + L2` (InfoNCE, one negative, no temperature, ‖f‖ = 1) and
  `L_CC = (1 - λ) L1 + λ L2` (cross-correlation), and Lemma 4.1 `L_align <= 2 √(d L1)`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks
from contrax import pairs as pairs_lib


def _batch_sum(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  total = jnp.sum(x, axis=0)
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def _global_batch(local: int, axis_name: Optional[str]) -> int:
  """The global batch size (static: the local size times the number of devices)."""
  return local if axis_name is None else local * jax.lax.axis_size(axis_name)


def _check_batch_statistics(name: str, z, axis_name: Optional[str]) -> int:
  """The global batch size of `z`, which must be >= 2 for batch statistics to exist."""
  n = _global_batch(np.shape(z)[0], axis_name)
  if n < 2:
    raise ValueError(f"{name} must have a global batch of at least 2 rows (per-dimension batch "
                     f"statistics are undefined for one sample), got a global batch of {n}")
  return n


def standardize(z: jax.Array, *, eps: float = 0.0, axis_name: Optional[str] = None) -> jax.Array:
  """Centre and scale each dimension over the (global) batch: `(z - mean) / sqrt(var + eps)`.

  The variance is the biased one (divided by the batch size B), as in `BatchNorm1d(affine=
  False)` in training mode, which the official Barlow Twins code applies. With `eps = 0` a
  constant dimension is left at exactly 0 rather than divided by zero.

  Each column is first shifted by its midrange `m = max/2 + min/2` over the global batch (one
  pmax over `axis_name`; the result does not depend on the shift): a constant column becomes
  exactly 0 (a float mean of a constant column is not exact, and its rounding residual would
  be rescaled to ±1 below), the differences of a nearly constant column are exact, and
  `|z - m| <= max |z|` cannot overflow. Each centred column c is then divided by the constant
  `s = max_rows |c|` (a pmax over `axis_name`; clipped to the normal float range):
  `c / sqrt(mean c² + eps) = c' / sqrt(mean c'² + eps / s²)` with `c' = c / s`,
  so a nearly constant or a huge column neither under- nor overflows, and the gradient stays
  finite for every finite input.
  """
  _checks.rank("z", z, 2)
  eps = _checks.non_negative("eps", eps)
  n = _global_batch(z.shape[0], axis_name)
  extremes = jax.lax.stop_gradient(jnp.stack([jnp.max(z, axis=0), -jnp.min(z, axis=0)]))
  if axis_name is not None:
    extremes = jax.lax.pmax(extremes, axis_name)
  midrange = extremes[0] / 2 - extremes[1] / 2
  shifted = z - midrange
  centred = shifted - _batch_sum(shifted, axis_name) / n
  scale = jax.lax.stop_gradient(jnp.max(jnp.abs(centred), axis=0))
  if axis_name is not None:
    scale = jax.lax.pmax(scale, axis_name)
  scale = jnp.clip(scale, jnp.finfo(z.dtype).tiny, 2.0**126)  # 1/scale stays a normal float
  unit = centred / scale
  var = _batch_sum(jnp.square(unit), axis_name) / n
  if eps > 0:
    return unit * jax.lax.rsqrt(var + eps / jnp.square(scale))
  safe = var > 0
  return jnp.where(safe, unit * jax.lax.rsqrt(jnp.where(safe, var, 1.0)), 0.0)


def cross_correlation(z1: jax.Array, z2: jax.Array, *, eps: float = 0.0,
                      axis_name: Optional[str] = None) -> jax.Array:
  """`C = std(z1)ᵀ std(z2) / B` over the global batch (each view standardised separately)."""
  pairs_lib.check_views(z1, z2)
  a = standardize(z1, eps=eps, axis_name=axis_name)
  b = standardize(z2, eps=eps, axis_name=axis_name)
  n = _global_batch(z1.shape[0], axis_name)
  c = a.T @ b
  if axis_name is not None:
    c = jax.lax.psum(c, axis_name)
  return c / n


def _redundancy_terms(c: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(Σ_i (1 - C_ii)², Σ_{i≠j} C_ij²)."""
  diag = jnp.diagonal(c)
  on = jnp.sum(jnp.square(1.0 - diag))
  off = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(diag))
  return on, off


def barlow_twins(z1: jax.Array, z2: jax.Array, *, lambda_: float = 5e-3, eps: float = 1e-5,
                 axis_name: Optional[str] = None) -> jax.Array:
  """Barlow Twins (Zbontar et al. 2021): `Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij²`.

  z1 and z2 are standardised *separately* per dimension over the global batch (biased
  variance, `eps` added to it as in `BatchNorm1d`), `C = z1ᵀ z2 / B`. The loss is a sum over
  dimensions, so it grows with D. With `axis_name`, means, variances and C are all-reduced
  with the global batch size; the value equals the single-device loss on the global batch.

  Args:
    z1, z2: `[b, D]` embeddings of the two views (bfloat16 / float16 are upcast to float32).
    lambda_: weight of the off-diagonal (redundancy) term, >= 0 (official 0.0051).
    eps: added to the per-dimension variance, >= 0.

  Raises ValueError for a global batch of one row and for concrete inputs with NaN or inf.
  """
  lambda_ = _checks.non_negative("lambda_", lambda_)
  pairs_lib.check_views(z1, z2)
  pairs_lib.check_finite("z1", z1)
  pairs_lib.check_finite("z2", z2)
  _check_batch_statistics("z1", z1, axis_name)
  # Batch statistics in float32 even from a bfloat16 network (mixed precision).
  z1, z2 = pairs_lib.at_least_float32(z1), pairs_lib.at_least_float32(z2)
  c = cross_correlation(z1, z2, eps=eps, axis_name=axis_name)
  on, off = _redundancy_terms(c)
  return on + lambda_ * off


class Decomposition(NamedTuple):
  """A loss and the two terms it decomposes into (see each function for the identity)."""
  loss: jax.Array
  l1: jax.Array
  l2: jax.Array


def paper_infonce_one_negative(f1: jax.Array, f2: jax.Array, f_neg: jax.Array) -> Decomposition:
  """InfoNCE with one negative and no temperature on unit vectors [P001 §3], with L = L1 + L2.

      L  = -E log( e^{f1ᵀf2} / (e^{f1ᵀf2} + e^{f1ᵀf⁻}) )
      L1 = -E f1ᵀ f2  (= ½ E‖f1 - f2‖² - 1)
      L2 =  E log( e^{f1ᵀf2} + e^{f1ᵀf⁻} )

  Rows of f1, f2, f_neg (`[n, d]` each) are L2-normalised here; E is the mean over rows.
  """
  pairs_lib.check_views(f1, f2)
  _checks.same_shape(("f1", "f_neg"), f1, f_neg)
  f1, f2, f_neg = (pairs_lib.l2_normalize(f) for f in (f1, f2, f_neg))
  pos = jnp.sum(f1 * f2, axis=1)
  neg = jnp.sum(f1 * f_neg, axis=1)
  l1 = -jnp.mean(pos)
  l2 = jnp.mean(jnp.logaddexp(pos, neg))
  return Decomposition(l1 + l2, l1, l2)


def cross_correlation_loss(f1: jax.Array, f2: jax.Array, lambda_: float) -> Decomposition:
  """The cross-correlation loss of [P001] and its decomposition `L_CC = (1-λ) L1 + λ L2`.

  `F_ij = E f_i(x1) f_j(x2)` with features centred and of unit variance per dimension
  (standardised over the rows, biased variance, no epsilon);
  `L_CC = Σ_i (1 - F_ii)² + λ Σ_{i≠j} F_ij²`, `L1 = Σ_i (1 - F_ii)²`, `L2 = ‖F - I‖²_F`.
  """
  lambda_ = _checks.non_negative("lambda_", lambda_)
  pairs_lib.check_views(f1, f2)
  _check_batch_statistics("f1", f1, None)
  f = cross_correlation(f1, f2, eps=0.0)
  on, off = _redundancy_terms(f)
  return Decomposition(on + lambda_ * off, on, on + off)


def alignment(f1: jax.Array, f2: jax.Array) -> jax.Array:
  """`L_align = E ‖f1 - f2‖²` over rows (the features as given). [P001 Lemma 4.1: with
  standardised features, `L_align <= 2 √(d · L1)`, L1 of `cross_correlation_loss`.]"""
  pairs_lib.check_views(f1, f2)
  return jnp.mean(jnp.sum(jnp.square(f1 - f2), axis=1))
