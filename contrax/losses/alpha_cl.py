"""α-CL: contrastive learning as coordinate-wise optimisation (Tian 2022, SPEC §6).

Tian, *Understanding Deep Contrastive Learning via Coordinate-wise Optimization*,
NeurIPS 2022 (arXiv 2201.12680) [P004].

On the stacked batch (SPEC §0: 2B rows, row i's positive p(i), N = 2B - 2 negatives) with
half squared distances `d²_ij = 1 - s_ij` of L2-normalised rows and `d²_i = d²_{i,p(i)}`:

    L_{φ,ψ} = mean_i φ(ξ_i),     ξ_i = Σ_{j negative of i} ψ(d²_i - d²_ij)
    α_ij    = φ'(ξ_i) ψ'(d²_i - d²_ij)  >= 0                 (pairwise importance)
    ∇_θ L_{φ,ψ} = ∇_θ mean_i Σ_j sg(α_ij) (d²_i - d²_ij)       (the α-CL surrogate)

Normalisation: SPEC writes `Σ_i`; contrax uses the *mean* over the 2B (global) rows on both
sides, like every other loss here, so `phi_psi_loss` with the InfoNCE preset (ε = 1) is
exactly `temperature × ntxent`, and the identity above holds with the same mean.

α constructors return `[2b, 2B]` arrays (local anchors × global stacked columns, zero on
self and positive): `infonce_alpha`, `entropy`, `sparsemax`, `inverse_power`, and
`contrax.negatives.alpha_direct`. Gradients flow through them (except `alpha_direct`, which
the paper defines on detached distances); `alpha_surrogate` stops them explicitly.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks
from contrax import negatives
from contrax.losses import _layout
from contrax.losses.infonce import NEG_INF, check_temperature


class PhiPsi(NamedTuple):
  """A member of the φ/ψ family; `phi` and `psi` increasing, elementwise.

  Optional log forms make the loss finite at any temperature: when both are given, ξ is
  accumulated as `log ξ_i = logsumexp_j log_psi(x_ij)` and the loss is `phi_of_log(log ξ_i)`
  (= φ(ξ_i)), so nothing overflows.
  """
  phi: Callable[[jax.Array], jax.Array]
  psi: Callable[[jax.Array], jax.Array]
  log_psi: Optional[Callable[[jax.Array], jax.Array]] = None
  phi_of_log: Optional[Callable[[jax.Array], jax.Array]] = None

  @property
  def has_log_form(self) -> bool:
    return self.log_psi is not None and self.phi_of_log is not None


def infonce_family(temperature: float = 0.5, eps: float = 1.0) -> PhiPsi:
  """InfoNCE: `φ(x) = t log(ε + x)`, `ψ(x) = e^{x/t}`. ε = 1 is `t × ntxent`; ε = 0 drops
  the positive from the denominator (`t × infonce(..., decoupled=True)`)."""
  t = check_temperature(temperature)
  eps = _checks.non_negative("eps", eps)
  if eps > 0:
    log_eps = math.log(eps)
    phi_of_log = lambda l: t * jnp.logaddexp(log_eps, l)
  else:
    phi_of_log = lambda l: t * l
  return PhiPsi(phi=lambda x: t * jnp.log(eps + x), psi=lambda x: jnp.exp(x / t),
                log_psi=lambda x: x / t, phi_of_log=phi_of_log)


def mine_family() -> PhiPsi:
  """MINE-style (Donsker–Varadhan): `φ = log`, `ψ = exp`."""
  return PhiPsi(phi=jnp.log, psi=jnp.exp, log_psi=lambda x: x, phi_of_log=lambda l: l)


def triplet_family(margin: float = 0.5) -> PhiPsi:
  """Triplet: `φ(x) = x`, `ψ(x) = [x + margin]₊` (margin >= 0)."""
  margin = _checks.non_negative("margin", margin)
  return PhiPsi(phi=lambda x: x, psi=lambda x: jax.nn.relu(x + margin))


def lifted_family(margin: float = 0.5) -> PhiPsi:
  """Lifted structured: `φ(x) = [log x]₊²`, `ψ(x) = e^{x + margin}` (margin >= 0)."""
  margin = _checks.non_negative("margin", margin)
  return PhiPsi(phi=lambda x: jnp.square(jax.nn.relu(jnp.log(x))),
                psi=lambda x: jnp.exp(x + margin), log_psi=lambda x: x + margin,
                phi_of_log=lambda l: jnp.square(jax.nn.relu(l)))


def _family(phi, psi) -> PhiPsi:
  if isinstance(phi, PhiPsi):
    if psi is not None:
      raise ValueError("psi must be None when phi is a PhiPsi preset, got a psi as well")
    return phi
  if not callable(phi) or not callable(psi):
    raise TypeError(f"phi and psi must be callables (or phi a PhiPsi preset), got {phi!r}, {psi!r}")
  return PhiPsi(phi, psi)


def _margins(z1, z2, axis_name):
  """The stacked layout and `x_ij = d²_i - d²_ij` (`[2b, 2B]`)."""
  pairs = _layout.stacked_pairs(z1, z2, axis_name=axis_name)
  if pairs.num_negatives < 1:
    raise ValueError("α-CL needs at least one negative: a global batch of >= 2 images")
  d2, d2_pos = _layout.half_sq_distances(pairs)
  return pairs, d2, d2_pos[:, None] - d2


def _derivative(f: Callable, x: jax.Array) -> jax.Array:
  """Elementwise derivative f'(x) of an elementwise f (one forward-mode pass)."""
  return jax.jvp(f, (x,), (jnp.ones_like(x),))[1]


def phi_psi_loss(z1: jax.Array, z2: jax.Array, phi, psi=None, *,
                 axis_name: Optional[str] = None) -> jax.Array:
  """`L_{φ,ψ} = mean_i φ(Σ_{j neg} ψ(d²_i - d²_ij))` on the stacked batch (module docstring).

  Args:
    z1, z2: `[b, D]` views (L2-normalised here).
    phi, psi: elementwise callables, or `phi` a `PhiPsi` preset and `psi` None.
  """
  family = _family(phi, psi)
  pairs, _, x = _margins(z1, z2, axis_name)
  neg = pairs.negative_mask
  if family.has_log_form:
    log_xi = jax.nn.logsumexp(jnp.where(neg, family.log_psi(x), NEG_INF), axis=1)
    per_row = family.phi_of_log(log_xi)
  else:
    per_row = family.phi(jnp.sum(jnp.where(neg, family.psi(x), 0.0), axis=1))
  return _layout.global_mean(per_row, pairs.num_global_rows, axis_name)


def alpha_from_phi_psi(z1: jax.Array, z2: jax.Array, phi, psi=None, *,
                       axis_name: Optional[str] = None) -> jax.Array:
  """Pairwise importance `α_ij = φ'(ξ_i) ψ'(d²_i - d²_ij)` (derivatives by `jax.jvp`).

  With a log form, `α_ij = g'(log ξ_i) · exp(log ψ(x_ij) - log ξ_i) · (log ψ)'(x_ij)`, g = φ∘exp
  (the same number, without overflow). Returns `[2b, 2B]`, zero off the negatives.
  """
  family = _family(phi, psi)
  pairs, _, x = _margins(z1, z2, axis_name)
  neg = pairs.negative_mask
  if family.has_log_form:
    log_psi = jnp.where(neg, family.log_psi(x), NEG_INF)
    log_xi = jax.nn.logsumexp(log_psi, axis=1, keepdims=True)
    outer = _derivative(family.phi_of_log, log_xi)
    ratio = jnp.exp(log_psi - jnp.where(jnp.isfinite(log_xi), log_xi, 0.0))
    alpha = outer * ratio * _derivative(family.log_psi, x)
  else:
    xi = jnp.sum(jnp.where(neg, family.psi(x), 0.0), axis=1, keepdims=True)
    alpha = _derivative(family.phi, xi) * _derivative(family.psi, x)
  return jnp.where(neg, alpha, 0.0)


def infonce_alpha(z1: jax.Array, z2: jax.Array, *, temperature: float = 0.5, eps: float = 1.0,
                  axis_name: Optional[str] = None) -> jax.Array:
  """InfoNCE's α (closed form): `α_ij = e^{-d²_ij/t} / (ε e^{-d²_i/t} + Σ_k e^{-d²_ik/t})`."""
  t = check_temperature(temperature)
  eps = _checks.non_negative("eps", eps)
  pairs, d2, _ = _margins(z1, z2, axis_name)
  d2_pos = jnp.sum(jnp.where(pairs.pos_mask, d2, 0.0), axis=1, keepdims=True)
  scores = jnp.where(pairs.negative_mask, -d2 / t, NEG_INF)
  log_norm = jax.nn.logsumexp(scores, axis=1, keepdims=True)
  if eps > 0:
    log_norm = jnp.logaddexp(log_norm, math.log(eps) - d2_pos / t)
  return jnp.exp(scores - log_norm)


def entropy(z1: jax.Array, z2: jax.Array, *, temperature: float = 0.5,
            axis_name: Optional[str] = None) -> jax.Array:
  """Entropy-regularised min player: `α_ij = softmax_j(-d²_ij / t)` over the negatives."""
  t = check_temperature(temperature)
  pairs, d2, _ = _margins(z1, z2, axis_name)
  return negatives.masked_softmax(-d2 / t, pairs.negative_mask)


def inverse_power(z1: jax.Array, z2: jax.Array, *, power: float = 1.0, offset: float = 1.0,
                  axis_name: Optional[str] = None) -> jax.Array:
  """Concave-power regulariser: `α_ij ∝ (d²_ij + t')^{-k}`, rows normalised to 1.

  Args:
    power: k > 0. offset: t' > 0.
  """
  k = _checks.positive("power", power)
  offset = _checks.positive("offset", offset)
  pairs, d2, _ = _margins(z1, z2, axis_name)
  return negatives.masked_softmax(-k * jnp.log(jnp.maximum(d2, 0.0) + offset),
                                  pairs.negative_mask)


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


def sparsemax(z1: jax.Array, z2: jax.Array, *, temperature: float = 0.5,
              axis_name: Optional[str] = None) -> jax.Array:
  """Quadratic-regularised min player: `α_i = sparsemax_j(-d²_ij / t)` over the negatives.

  Keeps the negatives closest to the anchor (smallest d²), gives the rest exactly zero; rows
  sum to 1 (unlike the official code, whose rows sum to 1.06 at t = 0.5).
  """
  t = check_temperature(temperature)
  pairs, d2, _ = _margins(z1, z2, axis_name)
  return sparsemax_rows(-d2 / t, pairs.negative_mask)


def _check_alpha(alpha, shape) -> None:
  if tuple(np.shape(alpha)) != tuple(shape):
    raise ValueError(f"alpha must have shape {tuple(shape)} (local rows x global columns), got "
                     f"{np.shape(alpha)}")
  if isinstance(alpha, jax.core.Tracer):
    return
  a = np.asarray(alpha, np.float64)
  if not np.all(np.isfinite(a)) or np.any(a < 0):
    raise ValueError("alpha must be finite and non-negative")


def alpha_surrogate(z1: jax.Array, z2: jax.Array, alpha: jax.Array, *,
                    axis_name: Optional[str] = None) -> jax.Array:
  """The α-CL surrogate `mean_i Σ_j sg(α_ij) (d²_i - d²_ij)` (sum over each row's negatives).

  Its gradient is the gradient of `L_{φ,ψ}` when α is `alpha_from_phi_psi` (module docstring);
  e.g. with `infonce_alpha(t, eps=1)` it is the gradient of `t × ntxent`. α is treated as a
  constant (`jax.lax.stop_gradient`), as the min player's output.

  Args:
    alpha: `[2b, 2B]` non-negative importances; entries on self/positive columns are ignored.
  """
  pairs, _, x = _margins(z1, z2, axis_name)
  _check_alpha(alpha, x.shape)
  alpha = jax.lax.stop_gradient(alpha)
  per_row = jnp.sum(jnp.where(pairs.negative_mask, alpha * x, 0.0), axis=1)
  return _layout.global_mean(per_row, pairs.num_global_rows, axis_name)


def alpha_cl_direct(z1: jax.Array, z2: jax.Array, *, p: float = 4.0, eps_alpha: float = 0.0,
                    temperature: float = 0.5, axis_name: Optional[str] = None) -> jax.Array:
  """α-CL-direct, the paper's new loss: `alpha_surrogate` with `negatives.alpha_direct` weights.

  p = 2, ε_α = 0 has exactly the gradient of `t × infonce(..., decoupled=True)`.
  """
  alpha = negatives.alpha_direct(z1, z2, p=p, eps_alpha=eps_alpha, temperature=temperature,
                                 axis_name=axis_name)
  return alpha_surrogate(z1, z2, alpha, axis_name=axis_name)
