"""α-CL (Tian 2022, arXiv 2201.12680): the contrastive covariance C_α and the α-CL energy E_α
of unnormalised features, whose max player over deep linear maps is PCA on C_α.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks


def _stacked_alpha_inputs(x1, x2, alpha):
  _checks.rank("x1", x1, 2)
  _checks.same_shape(("x1", "x2"), x1, x2)
  b = np.shape(x1)[0]
  if b < 2:
    raise ValueError(f"x1 must have >= 2 rows (a batch of >= 2 images has negatives), got {b}")
  if tuple(np.shape(alpha)) != (2 * b, 2 * b):
    raise ValueError(f"alpha must have shape {(2 * b, 2 * b)} (the stacked [2B, 2B] layout), "
                     f"got {np.shape(alpha)}")
  x = jnp.concatenate([jnp.asarray(x1), jnp.asarray(x2)])
  n = 2 * b
  rows = jnp.arange(n)
  negative = (rows[:, None] != rows[None, :]) & (rows[None, :] != (rows[:, None] + b) % n)
  alpha = jnp.where(negative, jnp.asarray(alpha, x.dtype), 0.0)
  return x, jnp.roll(x, -b, axis=0), alpha


def contrastive_covariance(x1: jax.Array, x2: jax.Array, alpha: jax.Array) -> jax.Array:
  """Contrastive covariance of inputs (or features) for pairwise importances α (Tian 2022):

      C_α[x] = Σ_i Σ_{j neg of i} α_ij (x_i − x_j)(x_i − x_j)ᵀ
               − Σ_i (Σ_{j neg of i} α_ij) (x_i − x_{p(i)})(x_i − x_{p(i)})ᵀ

  on the stacked layout `x = [x1; x2]` (2B rows), `p(i) = (i + B) mod 2B`, α
  `[2B, 2B]` (rows anchors, columns stacked samples; its self and positive entries are
  ignored, i.e. treated as 0, as every α constructor in contrax sets them).

  Convention: the full sums, no ½ — so for a linear map `z = W x` (no normalisation) and
  `d²_ij = ½‖z_i − z_j‖²`, `d²_i = d²_{i,p(i)}`, the α-CL energy is

      E_α(W) = Σ_i Σ_{j neg} α_ij (d²_ij − d²_i) = ½ tr(W C_α Wᵀ),

  and for a deep linear network `W = W_L ⋯ W_1` with `‖W_l‖_F = 1` its maximum is
  `λ_max(C_α) / 2` (when λ_max > 0), attained by rank-1 layers whose product's input
  direction is C_α's top eigenvector (Tian 2022, arXiv 2201.12680: the max player is PCA on
  C_α). C_α is symmetric but may be indefinite. The energy here sums over anchors `Σ_i`; the
  surrogate `contrax.losses.alpha_cl.alpha_surrogate` is `−E_α / 2B` (a mean, sign flipped).

  Computed as `Xᵀ(diag(r) + diag(c) − α − αᵀ)X − Δᵀ diag(r) Δ`, r / c the row / column sums
  of α and `Δ = x − x_p` (O(B² D + B D²) time, no `[2B, 2B, D]` intermediate).

  Args:
    x1, x2: `[B, D]` the two views' inputs (or features).
    alpha: `[2B, 2B]` non-negative importances (single device; not under `shard_map`).
  Returns:
    `[D, D]` symmetric matrix in x's dtype.
  """
  x, x_pos, alpha = _stacked_alpha_inputs(x1, x2, alpha)
  r = jnp.sum(alpha, axis=1)
  c = jnp.sum(alpha, axis=0)
  laplacian = jnp.diag(r + c) - alpha - alpha.T
  delta = x - x_pos
  cov = x.T @ laplacian @ x - (delta * r[:, None]).T @ delta
  return 0.5 * (cov + cov.T)


def alpha_energy(z1: jax.Array, z2: jax.Array, alpha: jax.Array) -> jax.Array:
  """The α-CL energy `E_α = Σ_i Σ_{j neg} α_ij (d²_ij − d²_i)` of *unnormalised* features,
  `d²_ij = ½‖z_i − z_j‖²` on the stacked layout (see `contrastive_covariance`); α is used as
  given (no stop-gradient: the caller freezes it). Differentiable in z."""
  z, z_pos, alpha = _stacked_alpha_inputs(z1, z2, alpha)
  sq = jnp.sum(z * z, axis=1)
  d2 = 0.5 * jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
  d2_pos = 0.5 * jnp.sum(jnp.square(z - z_pos), axis=1)
  return jnp.sum(alpha * (d2 - d2_pos[:, None]))
