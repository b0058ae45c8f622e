"""Negative weightings: functions returning row-stochastic weight matrices (SPEC §1, §4, §6).

Every hard-negative method in contrax is "a weighting + the one InfoNCE": a function here
returns `w` of shape `[2b, 2B]` (local anchors × global stacked columns) with zeros on each
anchor's self and positive columns and rows summing to 1 over its N = 2B - 2 negatives; pass
it as `infonce(..., weights=w)`. Gradients flow through `w` unless the caller stops them
(`jax.lax.stop_gradient`), as the official HCL and HCL-OT code does.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from contrax import _checks
from contrax import ot as ot_lib
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


def alpha_direct(z1: jax.Array, z2: jax.Array, *, p: float = 4.0, eps_alpha: float = 0.0,
                 temperature: float = 0.5, axis_name: Optional[str] = None) -> jax.Array:
  """α-CL-direct pairwise importance (Tian 2022, arXiv 2201.12680, SPEC §6):

      α_ij = exp(-(d²_ij)^{p/2} / t) / (Σ_k exp(-(d²_ik)^{p/2} / t) + ε_α · N)

  over each anchor's N negatives (zero on self and positive), `d²_ij = 1 - s_ij` on
  L2-normalised rows. Computed from *detached* embeddings, as the paper prescribes (α is the
  min player's closed form, a constant for the encoder). Rows sum to 1 when `eps_alpha = 0`
  and to less than 1 otherwise. p = 4, ε_α = 0 is the paper's recommended setting; p = 2,
  ε_α = 0 gives InfoNCE's α with ε = 0 (see `contrax.losses.alpha_cl`).

  Args:
    p: exponent > 0 applied to the distance `‖z_i - z_j‖/√2`.
    eps_alpha: ε_α >= 0.
    temperature: t > 0.
  Returns:
    `[2b, 2B]` weights (local anchors × global stacked columns).
  """
  p = _checks.positive("p", p)
  eps_alpha = _checks.non_negative("eps_alpha", eps_alpha)
  t = check_temperature(temperature)
  pairs = _layout.stacked_pairs(jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2),
                                axis_name=axis_name)
  if pairs.num_negatives < 1:
    raise ValueError("alpha_direct needs at least one negative: a global batch of >= 2 images")
  d2, _ = _layout.half_sq_distances(pairs)
  scores = jnp.where(pairs.negative_mask, -jnp.power(jnp.maximum(d2, 0.0), p / 2) / t, NEG_INF)
  log_norm = jax.nn.logsumexp(scores, axis=1, keepdims=True)
  if eps_alpha > 0:
    log_norm = jnp.logaddexp(log_norm, math.log(eps_alpha * pairs.num_negatives))
  return jnp.exp(scores - log_norm)


def ot(z1: jax.Array, z2: jax.Array, *, epsilon: float, marginals: str = "balanced",
       tau: float = 0.9, cost: str = "sqeuclidean", kappa: float = 1.0,
       num_iterations: int = 50, gradient: str = "stop",
       axis_name: Optional[str] = None) -> jax.Array:
  """HCL-OT weights (Jiang, Ishwar, Aeron 2023, arXiv 2111.03169): `w_ij = 2B pi^eps_ij`.

  `pi^eps` is the entropic OT coupling of the in-batch cost `||z_i - z_j||^2` with uniform
  marginals and self/positive pairs excluded (`contrax.ot.coupling`, which documents every
  argument and the gradient modes); `w` is its row-normalised form, computed in log space
  (`contrax.ot.row_normalised_weights`), so rows sum to 1 even before Sinkhorn has converged;
  excluded pairs are exactly 0.
  `marginals='semi_relaxed'` gives `hcl(beta=2t/epsilon, temperature=t)`; large epsilon gives
  uniform weights. HCL-OT loss: `infonce(z1, z2, weights=w, tau_plus=...)`. Diagnostics
  (marginal error, convergence): `contrax.ot.negative_weights`.
  """
  return ot_lib.negative_weights(
      z1, z2, epsilon=epsilon, marginals=marginals, tau=tau, cost=cost, kappa=kappa,
      num_iterations=num_iterations, gradient=gradient, axis_name=axis_name)[0]


def ot_quadratic(z1: jax.Array, z2: jax.Array, *, gamma: float, cost: str = "sqeuclidean",
                 kappa: float = 1.0, num_iterations: int = 100,
                 axis_name: Optional[str] = None) -> jax.Array:
  """Sparse hard-negative weights from quadratically-regularised OT (Blondel et al. 2018).

  `w = 2B pi` with pi the balanced quadratic coupling of `contrax.ot.quadratic_batch_coupling`
  (batch-size-free `gamma`: smaller is sparser and harder); easy negatives get exactly 0. No
  gradient flows through `w`.
  """
  pi, _ = ot_lib.quadratic_batch_coupling(z1, z2, gamma=gamma, cost=cost, kappa=kappa,
                                          num_iterations=num_iterations, axis_name=axis_name)
  return ot_lib.coupling_to_weights(pi)
