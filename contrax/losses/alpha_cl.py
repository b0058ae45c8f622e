"""α-CL: contrastive learning as coordinate-wise optimisation (Tian 2022).

Tian, *Understanding Deep Contrastive Learning via Coordinate-wise Optimization*,
NeurIPS 2022 (arXiv 2201.12680) [P004].

On the stacked batch (2B rows `[z1; z2]`, row i's positive p(i) = (i + B) mod 2B, N = 2B - 2
negatives) with half squared distances `d²_ij = 1 - s_ij` of L2-normalised rows and
`d²_i = d²_{i,p(i)}`:

    L_{φ,ψ} = mean_i φ(ξ_i),     ξ_i = Σ_{j negative of i} ψ(d²_i - d²_ij)
    α_ij    = φ'(ξ_i) ψ'(d²_i - d²_ij)  >= 0                 (pairwise importance)
    ∇_θ L_{φ,ψ} = ∇_θ mean_i Σ_j sg(α_ij) (d²_i - d²_ij)       (the α-CL surrogate)

Normalisation: the paper writes `Σ_i`; contrax uses the *mean* over the 2B (global) rows on
both sides, like every other loss here, so `phi_psi_loss` with the InfoNCE preset (ε = 1) is
exactly `temperature × ntxent`, and the identity above holds with the same mean.

The min players' closed forms α (entropy, α-CL-direct, inverse power, sparsemax) are
negative weightings and live in `contrax.weights` (`hcl(beta=1)` is the entropy player,
`alpha_direct`, `inverse_power`, `sparsemax`); `infonce_alpha` and `alpha_from_phi_psi` here
give the α of a φ/ψ loss. `sg` (stop-gradient) is the caller's explicit choice:
`alpha_surrogate_pairs` differentiates whatever α it is given, and the official α-CL code
computes α from detached embeddings, i.e. `jax.lax.stop_gradient(alpha)`.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks
from contrax import pairs as pairs_lib
from contrax import weights
from contrax._numerics import NEG_INF
from contrax.pairs import Pairs


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
  t = _checks.check_temperature(temperature)
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


def _margins(pairs: Pairs) -> jax.Array:
  """`x_ij = d²_i - d²_ij = s_ij - s_{i,p(i)}` (`[2b, 2B]`) of the geometry `pairs`."""
  if pairs.num_negatives < 1:
    raise ValueError("α-CL needs at least one negative: a global batch of >= 2 images")
  return pairs.sims - pairs.pos_sims[:, None]


def _build(z1, z2, axis_name) -> Pairs:
  pairs_lib.check_finite("z1", z1)
  pairs_lib.check_finite("z2", z2)
  return pairs_lib.build(z1, z2, axis_name=axis_name)


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
  return phi_psi_loss_pairs(_build(z1, z2, axis_name), phi, psi)


def phi_psi_loss_pairs(pairs: Pairs, phi, psi=None) -> jax.Array:
  """`phi_psi_loss` of the geometry `pairs` (normalised rows)."""
  family = _family(phi, psi)
  x = _margins(pairs)
  neg = pairs.negative_mask
  log_psi, phi_of_log = family.log_psi, family.phi_of_log
  if log_psi is not None and phi_of_log is not None:  # family.has_log_form
    log_xi = jax.nn.logsumexp(jnp.where(neg, log_psi(x), NEG_INF), axis=1)
    per_row = phi_of_log(log_xi)
  else:
    per_row = family.phi(jnp.sum(jnp.where(neg, family.psi(x), 0.0), axis=1))
  return pairs.global_mean(per_row)


def alpha_from_phi_psi(z1: jax.Array, z2: jax.Array, phi, psi=None, *,
                       axis_name: Optional[str] = None) -> jax.Array:
  """Pairwise importance `α_ij = φ'(ξ_i) ψ'(d²_i - d²_ij)` (derivatives by `jax.jvp`).

  With a log form, `α_ij = g'(log ξ_i) · exp(log ψ(x_ij) - log ξ_i) · (log ψ)'(x_ij)`, g = φ∘exp
  (the same number, without overflow). Returns `[2b, 2B]`, zero off the negatives.
  """
  return alpha_from_phi_psi_pairs(_build(z1, z2, axis_name), phi, psi)


def alpha_from_phi_psi_pairs(pairs: Pairs, phi, psi=None) -> jax.Array:
  """`alpha_from_phi_psi` of the geometry `pairs` (normalised rows)."""
  family = _family(phi, psi)
  x = _margins(pairs)
  neg = pairs.negative_mask
  log_psi_fn, phi_of_log = family.log_psi, family.phi_of_log
  if log_psi_fn is not None and phi_of_log is not None:  # family.has_log_form
    log_psi = jnp.where(neg, log_psi_fn(x), NEG_INF)
    log_xi = jax.nn.logsumexp(log_psi, axis=1, keepdims=True)
    outer = _derivative(phi_of_log, log_xi)
    ratio = jnp.exp(log_psi - jnp.where(jnp.isfinite(log_xi), log_xi, 0.0))
    alpha = outer * ratio * _derivative(log_psi_fn, x)
  else:
    xi = jnp.sum(jnp.where(neg, family.psi(x), 0.0), axis=1, keepdims=True)
    alpha = _derivative(family.phi, xi) * _derivative(family.psi, x)
  return jnp.where(neg, alpha, 0.0)


def infonce_alpha(z1: jax.Array, z2: jax.Array, *, temperature: float = 0.5, eps: float = 1.0,
                  axis_name: Optional[str] = None) -> jax.Array:
  """InfoNCE's α (closed form): `α_ij = e^{-d²_ij/t} / (ε e^{-d²_i/t} + Σ_k e^{-d²_ik/t})`."""
  t = _checks.check_temperature(temperature)
  eps = _checks.non_negative("eps", eps)
  pairs = _build(z1, z2, axis_name)
  _margins(pairs)
  d2 = 1.0 - pairs.sims
  d2_pos = 1.0 - pairs.pos_sims[:, None]
  scores = jnp.where(pairs.negative_mask, -d2 / t, NEG_INF)
  log_norm = jax.nn.logsumexp(scores, axis=1, keepdims=True)
  if eps > 0:
    log_norm = jnp.logaddexp(log_norm, math.log(eps) - d2_pos / t)
  return jnp.exp(scores - log_norm)


def _check_alpha(alpha, shape) -> None:
  if tuple(np.shape(alpha)) != tuple(shape):
    raise ValueError(f"alpha must have shape {tuple(shape)} (local rows x global columns), got "
                     f"{np.shape(alpha)}")
  if isinstance(alpha, jax.core.Tracer):
    return
  a = np.asarray(alpha, np.float64)
  if not np.all(np.isfinite(a)) or np.any(a < 0):
    raise ValueError("alpha must be finite and non-negative")


def alpha_surrogate_pairs(pairs: Pairs, alpha: jax.Array) -> jax.Array:
  """The α-CL surrogate `mean_i Σ_j α_ij (d²_i - d²_ij)` (sum over each row's negatives) of
  the geometry `pairs`.

  With a constant α (`jax.lax.stop_gradient(alpha)`, as the official α-CL code computes it
  from detached embeddings) its gradient is the gradient of `L_{φ,ψ}` when α is
  `alpha_from_phi_psi` (module docstring); e.g. with `infonce_alpha(t, eps=1)` it is the
  gradient of `t × ntxent`. A differentiable α adds the term `Σ_j (∇α_ij) x_ij`.

  Args:
    alpha: `[2b, 2B]` non-negative importances; entries on self/positive columns are ignored.
  """
  x = _margins(pairs)
  _check_alpha(alpha, x.shape)
  per_row = jnp.sum(jnp.where(pairs.negative_mask, alpha * x, 0.0), axis=1)
  return pairs.global_mean(per_row)


def alpha_surrogate(z1: jax.Array, z2: jax.Array, alpha: jax.Array, *,
                    axis_name: Optional[str] = None) -> jax.Array:
  """`alpha_surrogate_pairs` of views `z1, z2` (`[b, D]`, L2-normalised here); `alpha` is
  used as given (apply `jax.lax.stop_gradient` for the α-CL gradient)."""
  return alpha_surrogate_pairs(_build(z1, z2, axis_name), alpha)


def alpha_cl_direct(z1: jax.Array, z2: jax.Array, *, p: float = 4.0, eps_alpha: float = 0.0,
                    temperature=0.5, axis_name: Optional[str] = None) -> jax.Array:
  """α-CL-direct, the paper's new loss: `alpha_surrogate` with constant
  `contrax.weights.alpha_direct` weights, `jax.lax.stop_gradient`-ed here as the paper and
  its official code prescribe (α is the min player's closed form).

  p = 2, ε_α = 0 has exactly the gradient of `t × infonce(..., decoupled=True)`.
  """
  pairs = _build(z1, z2, axis_name)
  alpha = weights.alpha_direct(pairs, p=p, eps_alpha=eps_alpha, temperature=temperature)
  return alpha_surrogate_pairs(pairs, jax.lax.stop_gradient(alpha))
