"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce, LeCun, *VICReg:
Variance-Invariance-Covariance Regularization for Self-Supervised Learning*, ICLR 2022,
arXiv 2105.04906).

For the two views' embeddings `Z, Z'` (`[B, d]`, the global batch), with per-dimension
statistics over the batch (unbiased, divided by B - 1, as `torch.var` and `torch.cov` in the
official code):

    s(Z, Z')  = (1 / (B d)) Σ_i Σ_j (z_ij - z'_ij)²                      invariance (MSE)
    v(Z)      = (1 / d) Σ_j max(0, γ - sqrt(Var(z^j) + ε))                variance hinge
    c(Z)      = (1 / d) Σ_{j≠k} C(Z)_jk²,  C(Z) = (Z - Z̄)ᵀ (Z - Z̄) / (B - 1)  covariance

    loss = λ s(Z, Z') + μ (v(Z) + v(Z')) / 2 + ν (c(Z) + c(Z'))

Defaults λ = μ = 25, ν = 1, γ = 1, ε = 1e-4 (the paper's section 4 and its official code,
facebookresearch/vicreg `main_vicreg.py`). The paper's eq. (6) writes μ [v(Z) + v(Z')]; the
official code, with which λ, μ, ν were tuned, averages the two variance terms (`/ 2`) and sums
the two covariance terms, and that is the form computed here.

With `axis_name` (inside `shard_map`, each device holding its rows), the means and the
covariance matrices are all-reduced (`lax.psum`) with the global batch size, so the value is the
single-device loss on the global batch, identical on every device, and its gradient with
respect to each device's rows is the global loss's: no rescaling by the number of devices.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from contrax import _checks
from contrax import pairs as pairs_lib
from contrax.losses.barlow import _batch_sum, _check_batch_statistics

__all__ = ["VICRegTerms", "vicreg_terms", "vicreg_loss"]


class VICRegTerms(NamedTuple):
  """The three unweighted terms: s(Z, Z'), (v(Z) + v(Z')) / 2 and c(Z) + c(Z')."""
  invariance: jax.Array
  variance: jax.Array
  covariance: jax.Array


def _variance_and_covariance(z: jax.Array, n: int, gamma: float, eps: float,
                             axis_name: Optional[str]) -> tuple[jax.Array, jax.Array]:
  """v(Z) and c(Z) of one view from the global-batch covariance matrix."""
  centred = z - _batch_sum(z, axis_name) / n
  cov = centred.T @ centred
  if axis_name is not None:
    cov = jax.lax.psum(cov, axis_name)
  cov = cov / (n - 1)
  std = jnp.sqrt(jnp.diagonal(cov) + eps)
  variance = jnp.mean(jax.nn.relu(gamma - std))
  # The off-diagonal entries masked, not `Σ C² - Σ diag(C)²`: that difference cancels
  # catastrophically in float32 when the variances dominate.
  off_diagonal = ~jnp.eye(cov.shape[0], dtype=bool)
  covariance = jnp.sum(jnp.where(off_diagonal, jnp.square(cov), 0.0)) / cov.shape[0]
  return variance, covariance


def vicreg_terms(z1: jax.Array, z2: jax.Array, *, gamma: float = 1.0, eps: float = 1e-4,
                 axis_name: Optional[str] = None) -> VICRegTerms:
  """The unweighted VICReg terms of views `z1, z2` (`[b, d]` each; module docstring).

  Args:
    z1, z2: the two views' embeddings (projector outputs, not normalised).
    gamma: target standard deviation γ > 0 of each dimension.
    eps: ε > 0 added to the variance under the square root (keeps its gradient finite).
    axis_name: the data axis under `shard_map` (global-batch statistics), or None.

  Raises ValueError for a global batch of one row, bad γ or ε, and concrete inputs with NaN
  or inf.
  """
  gamma = _checks.positive("gamma", gamma)
  eps = _checks.positive("eps", eps)
  pairs_lib.check_views(z1, z2)
  pairs_lib.check_finite("z1", z1)
  pairs_lib.check_finite("z2", z2)
  # bf16 projections: the statistics are sums over the batch, computed in float32.
  z1, z2 = pairs_lib.at_least_float32(z1), pairs_lib.at_least_float32(z2)
  n = _check_batch_statistics("z1", z1, axis_name)
  invariance = _batch_sum(jnp.sum(jnp.square(z1 - z2), axis=1), axis_name) / (n * z1.shape[1])
  v1, c1 = _variance_and_covariance(z1, n, gamma, eps, axis_name)
  v2, c2 = _variance_and_covariance(z2, n, gamma, eps, axis_name)
  return VICRegTerms(invariance, (v1 + v2) / 2, c1 + c2)


def vicreg_loss(z1: jax.Array, z2: jax.Array, *, sim_coeff: float = 25.0,
                std_coeff: float = 25.0, cov_coeff: float = 1.0, gamma: float = 1.0,
                eps: float = 1e-4, axis_name: Optional[str] = None) -> jax.Array:
  """VICReg loss `λ s + μ (v(Z) + v(Z'))/2 + ν (c(Z) + c(Z'))` (module docstring).

  Args:
    z1, z2: `[b, d]` embeddings of the two views on this device.
    sim_coeff, std_coeff, cov_coeff: λ, μ, ν >= 0 (paper: 25, 25, 1).
    gamma, eps, axis_name: as in `vicreg_terms`.

  Example:
    >>> z = jnp.eye(4) * 2.0
    >>> float(vicreg_loss(z, z, std_coeff=0.0, cov_coeff=0.0))  # identical views: no invariance
    0.0
  """
  sim_coeff = _checks.non_negative("sim_coeff", sim_coeff)
  std_coeff = _checks.non_negative("std_coeff", std_coeff)
  cov_coeff = _checks.non_negative("cov_coeff", cov_coeff)
  terms = vicreg_terms(z1, z2, gamma=gamma, eps=eps, axis_name=axis_name)
  return sim_coeff * terms.invariance + std_coeff * terms.variance + cov_coeff * terms.covariance
