"""Negative weightings: the one place where "how hard" a negative is gets decided.

Every hard-negative method in contrax is "a weighting + one objective": a function here takes
the batch geometry `pairs` (`contrax.pairs.build`) and keyword hyper-parameters and returns
`w` of shape `[2b, 2B]` (local anchors × global stacked columns), exactly zero on each
anchor's self and positive columns, with rows summing to 1 over its N = 2B - 2 negatives
(`alpha_direct` with `eps_alpha > 0` sums to less). Pass it to `infonce_pairs(pairs,
weights=w)` or, as an α-CL importance, to `alpha_cl.alpha_surrogate_pairs(pairs, alpha=w)`.

Gradients flow through every weighting: nothing here calls `jax.lax.stop_gradient`
(`ot(gradient="stop")` and the quadratic coupling are solvers that are explicitly not
differentiated, documented on their knobs). Whether the encoder's gradient also flows through
`w` is the caller's choice, and the official codes differ: HCL differentiates through its
reweighting; HCL-OT and α-CL treat the weights as constants.

With `s_ij` the cosine similarities of `pairs` and `d²_ij = 1 - s_ij` the half squared
distances of the unit rows, one identity ties three min players together:

    softmax_j(beta s_ij / t) at beta = 1  =  softmax_j(-d²_ij / t)            (α-CL, entropy)
                                          =  alpha_direct(p = 2, eps_alpha = 0)

since `-d²_ij / t = s_ij / t - 1/t` and a softmax ignores a per-row constant. So α-CL's
entropy-regularised min player and α-CL-direct with p = 2 are `hcl(beta=1)`; only `hcl` is
implemented for them.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from contrax import _checks
from contrax import ot as ot_lib
from contrax._numerics import NEG_INF, masked_softmax
from contrax.pairs import Pairs

__all__ = [
    "uniform", "hcl", "alpha_direct", "inverse_power", "sparsemax_rows", "sparsemax", "ot",
    "quadratic_ot", "REGISTRY",
]


def _check_negatives(pairs: Pairs, what: str) -> None:
  if pairs.num_negatives < 1:
    raise ValueError(f"{what} needs at least one negative: a global batch of >= 2 images, got "
                     f"{pairs.num_global_rows // 2}")


def uniform(pairs: Pairs) -> jax.Array:
  """`w_ij = 1/N` on every negative: SimCLR (Chen et al. 2020) and DCL (Chuang et al. 2020)."""
  _check_negatives(pairs, "uniform")
  return pairs.negative_mask.astype(pairs.sims.dtype) / pairs.num_negatives


def hcl(pairs: Pairs, *, beta: float = 1.0, temperature: float = 0.5) -> jax.Array:
  """HCL weights (Robinson et al. 2021, arXiv 2010.04592): `w_ij = softmax_j(beta s_ij / t)`
  over each anchor's negatives.

  beta >= 0 is the hardness; beta = 0 gives uniform weights (DCL). Equal to the semi-relaxed
  entropic OT coupling with epsilon = 2t/beta (Jiang et al. 2023); at beta = 1, to α-CL's
  entropy min player and `alpha_direct(p=2)` (module docstring). The official HCL code
  differentiates through these weights (its `reweight_neg = (imp * neg).sum() / imp.mean()`
  with `imp = neg**beta` is not detached).
  """
  beta = _checks.non_negative("beta", beta)
  t = _checks.check_temperature(temperature)
  _check_negatives(pairs, "hcl")
  return masked_softmax(beta * pairs.sims / t, pairs.negative_mask)


def alpha_direct(pairs: Pairs, *, p: float = 4.0, eps_alpha: float = 0.0,
                 temperature: float = 0.5) -> jax.Array:
  """α-CL-direct pairwise importance (Tian 2022, arXiv 2201.12680):

      α_ij = exp(-(d²_ij)^{p/2} / t) / (Σ_k exp(-(d²_ik)^{p/2} / t) + ε_α · N)

  over each anchor's N negatives (zero on self and positive). Rows sum to 1 when
  `eps_alpha = 0` and to less than 1 otherwise. p = 4, ε_α = 0 is the paper's recommended
  setting; p = 2, ε_α = 0 is `hcl(beta=1)` (module docstring). The paper (and its official
  code) computes α from detached embeddings, as the min player's closed form, a constant for
  the encoder: apply `jax.lax.stop_gradient` to the result for that. The gradient at a
  coinciding pair (d²_ij = 0, where `(d²)^{p/2}` has an infinite slope for p < 2) is taken as 0.

  Args:
    p: exponent > 0 applied to the distance `‖z_i - z_j‖/√2`.
    eps_alpha: ε_α >= 0.
    temperature: t > 0.
  """
  p = _checks.positive("p", p)
  eps_alpha = _checks.non_negative("eps_alpha", eps_alpha)
  t = _checks.check_temperature(temperature)
  _check_negatives(pairs, "alpha_direct")
  d2 = 1.0 - pairs.sims
  # (d²)^{p/2} with a zero (not infinite, for p < 2) derivative where d² <= 0.
  apart = d2 > 0
  distance = jnp.where(apart, jnp.power(jnp.where(apart, d2, 1.0), p / 2), 0.0)
  scores = jnp.where(pairs.negative_mask, -distance / t, NEG_INF)
  log_norm = jax.nn.logsumexp(scores, axis=1, keepdims=True)
  if eps_alpha > 0:
    log_norm = jnp.logaddexp(log_norm, math.log(eps_alpha * pairs.num_negatives))
  return jnp.exp(scores - log_norm)


def inverse_power(pairs: Pairs, *, power: float = 1.0, offset: float = 1.0) -> jax.Array:
  """α-CL's concave-power min player (Tian 2022): `α_ij ∝ (d²_ij + t')^{-k}`, rows normalised.

  Args:
    power: k > 0. offset: t' > 0.
  """
  k = _checks.positive("power", power)
  offset = _checks.positive("offset", offset)
  _check_negatives(pairs, "inverse_power")
  d2 = jnp.maximum(1.0 - pairs.sims, 0.0)
  return masked_softmax(-k * jnp.log(d2 + offset), pairs.negative_mask)


def sparsemax_rows(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Row-wise sparsemax (Martins & Astudillo 2016) of `scores` over the True entries of `mask`.

  The Euclidean projection of each row onto the simplex: `α = [s - τ]₊` with τ chosen so that
  the row sums to 1. With the masked entries sorted in decreasing order `s_(1) >= s_(2) >= …`,
  the support size is `K = max{k : 1 + k s_(k) > Σ_{j<=k} s_(j)}` (k counts from 1; using
  0-based k here is the official α-CL code's off-by-one) and `τ = (Σ_{j<=K} s_(j) - 1) / K`.
  Rows are non-negative and sum to 1 up to rounding; zero outside `mask`.
  """
  masked = jnp.where(mask, scores, NEG_INF)
  row_max = jnp.max(masked, axis=1, keepdims=True)
  shifted = masked - jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # sparsemax is shift-invariant
  desc = -jnp.sort(-shifted, axis=1)
  k = jnp.arange(1, scores.shape[1] + 1, dtype=scores.dtype)
  in_support = 1.0 + k * desc > jnp.cumsum(desc, axis=1)
  support_size = jnp.maximum(jnp.sum(in_support, axis=1, keepdims=True), 1)
  tau = (jnp.sum(jnp.where(in_support, desc, 0.0), axis=1, keepdims=True) - 1.0) / support_size
  return jnp.where(mask, jax.nn.relu(shifted - tau), 0.0)


def sparsemax(pairs: Pairs, *, temperature: float = 0.5) -> jax.Array:
  """α-CL's quadratic-regularised min player (Tian 2022): `α_i = sparsemax_j(-d²_ij / t)`.

  Keeps the negatives closest to the anchor (smallest d²), gives the rest exactly zero; rows
  sum to 1 (unlike the official code, whose rows sum to 1.06 at t = 0.5).
  """
  t = _checks.check_temperature(temperature)
  _check_negatives(pairs, "sparsemax")
  return sparsemax_rows(-(1.0 - pairs.sims) / t, pairs.negative_mask)


def ot(pairs: Pairs, *, epsilon: float = 0.7, marginals: str = "balanced", tau: float = 0.9,
       cost: str = "sqeuclidean", kappa: float = 1.0, num_iterations: int = 10,
       gradient: str = "stop") -> jax.Array:
  """HCL-OT weights (Jiang, Ishwar, Aeron 2023, arXiv 2111.03169): `w_ij = 2B pi^eps_ij`.

  `pi^eps` is the entropic OT coupling of the in-batch cost (`cost="sqeuclidean"`:
  `||z_i - z_j||^2`) with uniform marginals and self/positive pairs excluded
  (`contrax.ot.batch_coupling`, which documents every argument); `w` is its row-normalised
  form, computed in log space, so rows sum to 1 even before Sinkhorn has converged; excluded
  pairs are exactly 0. `marginals='semi_relaxed'` gives `hcl(beta=2t/epsilon, temperature=t)`;
  large epsilon gives uniform weights. `gradient` says how `w` is differentiated: "stop" (no
  gradient through the coupling, as the official HCL-OT code), "implicit" or "unroll".
  Diagnostics (marginal error, convergence): `contrax.ot.batch_coupling(pairs, ...)`.
  """
  return ot_lib.batch_coupling(pairs, epsilon=epsilon, marginals=marginals, tau=tau, cost=cost,
                               kappa=kappa, num_iterations=num_iterations,
                               gradient=gradient).weights


def quadratic_ot(pairs: Pairs, *, gamma: float = 0.1, cost: str = "sqeuclidean",
                 kappa: float = 1.0, num_iterations: int = 10) -> jax.Array:
  """Sparse hard-negative weights from quadratically-regularised OT (Blondel et al. 2018).

  `w = 2B pi` with pi the balanced quadratic coupling of `contrax.ot.quadratic_batch_coupling`
  (batch-size-free `gamma`: smaller is sparser and harder; `num_iterations` L-BFGS steps);
  easy negatives get exactly 0. The coupling's solver is not differentiated, so no gradient
  flows through `w`.
  """
  return ot_lib.quadratic_batch_coupling(pairs, gamma=gamma, cost=cost, kappa=kappa,
                                         num_iterations=num_iterations).weights


REGISTRY: dict[str, Callable[..., jax.Array]] = {
    "uniform": uniform,
    "hcl": hcl,
    "alpha_direct": alpha_direct,
    "inverse_power": inverse_power,
    "sparsemax": sparsemax,
    "ot": ot,
    "quadratic_ot": quadratic_ot,
}
