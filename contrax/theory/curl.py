"""The k-negative CURL bound on a finite sample (Arora et al. 2019, arXiv 1902.09229, as used
by Merad et al. 2020): collision probability τ_k, the mean-classifier loss and `curl_bound`.

With ρ the class distribution, τ_k = 1 − Σ_c ρ(c)(1 − ρ(c))^k, ℓ_min = log_b 2 (logistic)
or 1 (hinge), the bound is `L^μ_sup,k(f) ≤ (L_un(f) − τ_k ℓ_min) / (1 − τ_k)`. The scores
and losses themselves live in `contrax.losses.curl` and are used from there.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks
from contrax.losses import curl
from contrax.losses.curl import mean_classifier
from contrax.theory.sampling import BoundTuples, _check_class_probs


def collision_probability(class_probs, num_negatives: int) -> float:
  """`τ_k = P[c⁺ ∈ {c⁻_1..c⁻_k}] = 1 − Σ_c ρ(c)(1 − ρ(c))^k` for c⁺, c⁻_i i.i.d. ~ ρ."""
  k = _checks.positive_int("num_negatives", num_negatives)
  if class_probs is None or np.ndim(class_probs) != 1:
    raise ValueError(f"class_probs must be a 1-D array of class probabilities, got {class_probs!r}")
  probs = _check_class_probs(class_probs, np.size(class_probs))
  return float(1.0 - np.sum(probs * (1.0 - probs) ** k))


def _loss_rows(v: jax.Array, loss: str, base: float) -> jax.Array:
  """ℓ of every row of `v [M, k]` through the losses of `contrax.losses.curl`."""
  if loss == "logistic":
    return jax.vmap(lambda row: curl.logistic_loss(row[None], base))(v)
  return jax.vmap(lambda row: curl.hinge_loss(row[None]))(v)


def _loss_floor(loss: str, base: float) -> float:
  """ℓ_min: the least value of ℓ(v) over v with one zero coordinate."""
  return math.log(2.0) / math.log(base) if loss == "logistic" else 1.0


def _check_loss(loss: str, base: float) -> tuple[str, float]:
  _checks.choice("loss", loss, curl.LOSSES)
  base = _checks.positive("base", base)
  if base == 1.0:
    raise ValueError("base must be > 0 and != 1 (it is the base of a logarithm), got 1.0")
  return loss, base


def mean_classifier_loss(anchor_features: jax.Array, positive_classes: jax.Array,
                         negative_classes: jax.Array, centres: jax.Array, *,
                         loss: str = "logistic", base: float = 2.0) -> tuple[jax.Array, jax.Array]:
  """(k+1)-way mean-classifier loss and accuracy over the collision-free tuples (Arora et al. 2019).

  For tuple m with anchor features `f(x_m)`, class `c⁺_m` and negative classes `c⁻_{m,i}`,
  the margins of the mean classifier W (rows `μ_c = centres[c]`, see `mean_classifier`) are

      v_{m,i} = (W f(x_m))_{c⁺_m} − (W f(x_m))_{c⁻_{m,i}} = f(x_m)ᵀ(μ_{c⁺_m} − μ_{c⁻_{m,i}})

  and `L^μ_sup,k = mean_m ℓ(v_m)` over the tuples with `c⁻_{m,i} ≠ c⁺_m` for all i (a mask,
  so this is jit-compatible); accuracy is the fraction of those with every margin > 0.
  Repeated negative classes are kept as drawn (the task of such a tuple has fewer classes).

  Args:
    anchor_features: `[M, d]`; positive_classes: `[M]`; negative_classes: `[M, k]` (ints);
    centres: `[C, d]`; loss: 'logistic' (base `base`) or 'hinge'.
  Returns:
    `(loss, accuracy)`; both 0 when no tuple is collision-free.
  """
  loss, base = _check_loss(loss, base)
  _checks.rank("anchor_features", anchor_features, 2)
  _checks.rank("positive_classes", positive_classes, 1)
  _checks.rank("negative_classes", negative_classes, 2)
  _checks.rank("centres", centres, 2)
  m = np.shape(anchor_features)[0]
  if np.shape(positive_classes)[0] != m or np.shape(negative_classes)[0] != m:
    raise ValueError(f"positive_classes [M] and negative_classes [M, k] must have M = {m} rows "
                     f"like anchor_features, got {np.shape(positive_classes)} and "
                     f"{np.shape(negative_classes)}")
  v = curl.curl_scores(anchor_features, centres[positive_classes], centres[negative_classes])
  free = ~jnp.any(negative_classes == positive_classes[:, None], axis=1)
  count = jnp.maximum(jnp.sum(free), 1)
  rows = _loss_rows(v, loss, base)
  correct = jnp.all(v > 0, axis=1)
  return (jnp.sum(jnp.where(free, rows, 0.0)) / count,
          jnp.sum(jnp.where(free, correct, False)) / count)



@functools.partial(jax.jit, static_argnames=("loss", "base", "chunk_size"))
def _curl_bound_terms(features, anchor, positive_class, negative_classes, positives, negatives,
                      collision, pools, tau, *, loss, base, chunk_size):
  """(L_un, L^μ_sup,k, accuracy) of `curl_bound`, in one compiled program."""
  num_classes, s = pools.shape
  centres = mean_classifier(features[pools.reshape(-1)], jnp.repeat(jnp.arange(num_classes), s),
                            num_classes)
  anchors = features[anchor]

  def unsupervised_row(row):
    anchor_features, row_positives, row_negatives = row
    v = curl.curl_scores(jnp.broadcast_to(anchor_features, (s, anchor_features.shape[0])),
                         features[row_positives], features[row_negatives])
    return jnp.mean(_loss_rows(v, loss, base))

  rows = jax.lax.map(unsupervised_row, (anchors, positives, negatives), batch_size=chunk_size)
  unsupervised = ((1.0 - tau) * jnp.mean(rows, where=~collision)
                  + tau * jnp.mean(rows, where=collision))
  lhs, accuracy = mean_classifier_loss(anchors, positive_class, negative_classes, centres,
                                       loss=loss, base=base)
  return unsupervised, lhs, accuracy


def curl_bound(features: jax.Array, tuples: BoundTuples, *, loss: str = "logistic",
               base: float = 2.0, chunk_size: int = 64) -> dict[str, float]:
  """Both sides of the k-negative CURL bound on a finite sample (Arora et al. 2019).

      L^μ_sup,k(f) ≤ (L_un(f) − τ_k ℓ_min) / (1 − τ_k)

  with `ℓ_min = log_b 2` (logistic) or 1 (hinge), `τ_k = collision_probability(ρ, k)`,
  `μ_c` the mean of f over `tuples.pools[c]`, `L^μ_sup,k` the mean-classifier loss over the
  collision-free stratum (`mean_classifier_loss`), and the stratified estimate

      L_un = (1 − τ_k) · mean_{free rows} u_t + τ_k · mean_{collision rows} u_t,
      u_t  = mean_j ℓ(f(x_t)ᵀ(f(x⁺_{t,j}) − f(x⁻_{t,j,i}))_i).

  With tuples from `sample_bound_tuples` the inequality holds for every encoder, up to
  floating-point rounding. This is our k-negative form derived for this library (Jensen plus
  a split on the collision event); for k = 1 and base 2 it is Arora et al.'s Lemma 4.3.

  Args:
    features: `[n, d]` encoder outputs of the point set the tuples index.
    tuples: from `sample_bound_tuples`.
    chunk_size: tuples scored together (memory `chunk_size · s · k · d`).
  Returns:
    dict of floats: `tau`, `ell_min`, `unsupervised_loss` (L_un), `lhs` (L^μ_sup,k),
    `rhs`, `mean_classifier_accuracy`, `holds` (lhs <= rhs up to 1e-5 relative).
  """
  loss, base = _check_loss(loss, base)
  _checks.rank("features", features, 2)
  if not isinstance(tuples, BoundTuples):
    raise TypeError(f"tuples must be a BoundTuples from sample_bound_tuples, got "
                    f"{type(tuples).__name__}")
  chunk_size = _checks.positive_int("chunk_size", chunk_size)
  n = np.shape(features)[0]
  if tuples.pools.max() >= n:
    raise ValueError(f"features must have a row for every point the tuples index (at least "
                     f"{tuples.pools.max() + 1}), got {n} rows")
  k = tuples.negative_classes.shape[1]
  tau = collision_probability(tuples.class_probs, k)
  ell_min = _loss_floor(loss, base)
  arrays = (tuples.anchor, tuples.positive_class, tuples.negative_classes, tuples.positives,
            tuples.negatives, tuples.collision, tuples.pools)
  unsupervised, lhs, accuracy = _curl_bound_terms(
      jnp.asarray(features), *map(jnp.asarray, arrays), tau, loss=loss, base=base,
      chunk_size=chunk_size)
  rhs = (unsupervised - tau * ell_min) / (1.0 - tau)
  lhs, rhs = float(lhs), float(rhs)
  return {"tau": tau, "ell_min": ell_min, "unsupervised_loss": float(unsupervised), "lhs": lhs,
          "rhs": rhs, "mean_classifier_accuracy": float(accuracy),
          "holds": bool(lhs <= rhs + 1e-5 * max(1.0, abs(rhs)))}
