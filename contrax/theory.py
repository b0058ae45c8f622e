"""Theory diagnostics: quantities from the analyses of contrastive learning, computed on samples.

Sections:
- Latent-class vector data for theory studies (host-side NumPy, explicit `np.random.Generator`):
  `latent_class_points`, `to_sphere`, `sample_tuples`, `sample_bound_tuples`.
- CURL (SPEC §2; Arora et al. 2019, arXiv 1902.09229, as used by [P000] Merad et al. 2020):
  `collision_probability`, `mean_classifier` (re-exported from `contrax.losses.curl`),
  `mean_classifier_loss`, `curl_bound`.
- Generalisation (SPEC §3; [P001] Huang et al. 2023): `sample_views`, `view_features`,
  `augmented_class_centres`, `nearest_centre_classify`, `nearest_centre_error`, `centre_gram`,
  `max_cross_centre`, `centre_deficit`, `rho_max`, `divergence_threshold`,
  `alignment_from_views`, `r_epsilon`, `augmented_distance`, `augmented_distance_matrix`,
  `greedy_clique`, `sigma_hat`.
- α-CL (SPEC §6; [P004] Tian 2022): `contrastive_covariance` (C_α), `alpha_energy` (E_α).

The scores and losses themselves live in `contrax.losses.curl` and are used from there.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks
from contrax.losses import curl
from contrax.losses.curl import mean_classifier

# ---------------------------------------------------------------------------------------------
# Latent-class vector data
# ---------------------------------------------------------------------------------------------


def _check_generator(rng) -> np.random.Generator:
  if not isinstance(rng, np.random.Generator):
    raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                    f"got {type(rng).__name__}")
  return rng


def to_sphere(x, last_coordinate: float = 0.5) -> np.ndarray:
  """Map rows to the unit sphere with a fixed last coordinate b: `[√(1 − b²) x/‖x‖, b]`.

  Every output row has norm 1 and last entry b, so no two distinct directions are parallel
  and no input is zero: the setting in which the NTK of a ReLU network is positive definite
  (Du et al. 2019; Allen-Zhu et al. 2019). Shape `[n, D] -> [n, D + 1]`, float32.
  """
  _checks.rank("x", x, 2)
  _checks.in_range("last_coordinate", last_coordinate, 0.0, 1.0)
  x = np.asarray(x, np.float64)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  if np.any(norms == 0):
    raise ValueError(f"x must have no zero rows, got zero rows at {np.flatnonzero(norms[:, 0] == 0)}")
  scale = math.sqrt(1.0 - last_coordinate ** 2)
  column = np.full((x.shape[0], 1), last_coordinate)
  return np.concatenate([scale * x / norms, column], axis=1).astype(np.float32)


def latent_class_points(rng: np.random.Generator, num_classes: int, points_per_class: int,
                        dim: int, *, spread: float = 0.5,
                        last_coordinate: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """Synthetic latent classes: C clusters on the unit sphere with a fixed last coordinate.

  Class c has a centre `u_c`, uniform on the sphere of R^{dim−1}; its points are
  `to_sphere(u_c + spread · ε / √(dim−1))` with `ε ~ N(0, I)`, so `spread` is the noise norm
  relative to the centre's (0: every point at its centre). Points are class-balanced; the
  class distribution ρ of a study enters through the tuple samplers.

  Returns `(x float32 [C·points_per_class, dim], labels int32 [C·points_per_class])`, sorted
  by class.
  """
  _check_generator(rng)
  num_classes = _checks.positive_int("num_classes", num_classes)
  points_per_class = _checks.positive_int("points_per_class", points_per_class)
  dim = _checks.positive_int("dim", dim)
  if dim < 2:
    raise ValueError(f"dim must be >= 2 (the last coordinate is fixed), got {dim}")
  spread = _checks.non_negative("spread", spread)
  centres = rng.normal(size=(num_classes, dim - 1))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  labels = np.repeat(np.arange(num_classes, dtype=np.int32), points_per_class)
  noise = rng.normal(size=(labels.size, dim - 1)) * (spread / math.sqrt(dim - 1))
  return to_sphere(centres[labels] + noise, last_coordinate), labels


def _check_class_probs(class_probs, num_classes: int) -> np.ndarray:
  if class_probs is None:
    return np.full(num_classes, 1.0 / num_classes)
  probs = np.asarray(class_probs, np.float64)
  if probs.shape != (num_classes,):
    raise ValueError(f"class_probs must have shape ({num_classes},) (one entry per class of "
                     f"labels), got shape {probs.shape}")
  if np.any(~np.isfinite(probs)) or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
    raise ValueError(f"class_probs must be non-negative and sum to 1, got {probs.tolist()}")
  return probs / probs.sum()


def _categorical(rng: np.random.Generator, probs: np.ndarray, shape) -> np.ndarray:
  """Draws of `shape` from `probs [C]`, or from one distribution `probs[t]` per leading row t."""
  cdf = np.cumsum(probs, axis=-1)
  cdf = cdf / cdf[..., -1:]
  u = rng.random(shape)
  if probs.ndim == 2:
    cdf = cdf.reshape(cdf.shape[:1] + (1,) * (u.ndim - 1) + cdf.shape[1:])
  return np.minimum(np.sum(u[..., None] >= cdf, axis=-1), probs.shape[-1] - 1)


def _excluding(probs: np.ndarray, classes: np.ndarray) -> np.ndarray:
  """Row-wise ρ restricted to classes != `classes` and renormalised, `[T, C]`."""
  restricted = np.tile(probs, (classes.size, 1))
  restricted[np.arange(classes.size), classes] = 0.0
  return restricted / restricted.sum(axis=1, keepdims=True)


class _Members(NamedTuple):
  """Points grouped by class: `order[start[c] : start[c] + count[c]]` are class c's points."""
  labels: np.ndarray
  order: np.ndarray
  start: np.ndarray
  count: np.ndarray
  rank: np.ndarray  # rank[i]: position of point i within its class


def _members(labels) -> _Members:
  labels = np.asarray(labels)
  _checks.rank("labels", labels, 1)
  if not np.issubdtype(labels.dtype, np.integer) or labels.size == 0 or labels.min() < 0:
    raise ValueError(f"labels must be a non-empty array of integers >= 0, got dtype "
                     f"{labels.dtype} and shape {labels.shape}")
  order = np.argsort(labels, kind="stable")
  count = np.bincount(labels)
  start = np.concatenate([[0], np.cumsum(count)[:-1]])
  rank = np.empty(labels.size, np.int64)
  rank[order] = np.arange(labels.size) - start[labels[order]]
  return _Members(labels, order, start, count, rank)


def _draw_members(rng: np.random.Generator, members: _Members, classes: np.ndarray,
                  exclude: tuple[np.ndarray, ...] = ()) -> np.ndarray:
  """A uniform point of class `classes[t]` for every t, other than the points `exclude[j][t]`.

  The excluded points are distinct; those of another class exclude nothing.
  """
  if exclude:
    ranks = np.stack([np.where(members.labels[e] == classes, members.rank[e], np.iinfo(np.int64).max)
                      for e in exclude], axis=-1)
    ranks = np.sort(ranks, axis=-1)
    excluded = np.sum(ranks < np.iinfo(np.int64).max, axis=-1)
  else:
    ranks = np.zeros(classes.shape + (0,), np.int64)
    excluded = 0
  r = np.floor(rng.random(classes.shape) * (members.count[classes] - excluded)).astype(np.int64)
  for j in range(ranks.shape[-1]):
    r += r >= ranks[..., j]
  return members.order[members.start[classes] + r]


class Tuples(NamedTuple):
  """Index tuples `(x, x⁺, x⁻_1..x⁻_k)` into a point set: `[M]`, `[M]`, `[M, k]`."""
  anchor: np.ndarray
  positive: np.ndarray
  negatives: np.ndarray


def sample_tuples(rng: np.random.Generator, labels, num_tuples: int, num_negatives: int, *,
                  class_probs=None, collision_free: bool = False) -> Tuples:
  """Fixed CURL tuples over a labelled point set (SPEC §2).

  `c⁺ ~ ρ`; x and x⁺ are distinct points of class c⁺; each negative class `c⁻_i ~ ρ`
  independently (restricted to `c⁻_i ≠ c⁺` when `collision_free`), and x⁻_i is a point of
  that class other than x and x⁺ (so no score is identically zero). `class_probs` is ρ over
  the classes `0..max(labels)` (uniform if None); classes that ρ can draw need 2 points
  (3 when collisions are possible).
  """
  _check_generator(rng)
  members = _members(labels)
  num_tuples = _checks.positive_int("num_tuples", num_tuples)
  k = _checks.positive_int("num_negatives", num_negatives)
  probs = _check_class_probs(class_probs, members.count.size)
  counts = members.count
  needed = 2 if collision_free else 3
  short = np.flatnonzero((probs > 0) & (counts < needed))
  if short.size:
    raise ValueError(f"labels must have >= {needed} points in every class with class_probs > 0, "
                     f"classes {short.tolist()} have {counts[short].tolist()}")
  if collision_free and np.count_nonzero(probs) < 2:
    raise ValueError("collision_free tuples need class_probs > 0 on at least two classes, got "
                     f"{probs.tolist()}")
  positive_class = _categorical(rng, probs, (num_tuples,))
  anchor = _draw_members(rng, members, positive_class)
  positive = _draw_members(rng, members, positive_class, (anchor,))
  if collision_free:
    negative_class = _categorical(rng, _excluding(probs, positive_class), (num_tuples, k))
  else:
    negative_class = _categorical(rng, probs, (num_tuples, k))
  negatives = _draw_members(rng, members, negative_class,
                            (np.repeat(anchor[:, None], k, 1), np.repeat(positive[:, None], k, 1)))
  return Tuples(anchor, positive, negatives)


# ---------------------------------------------------------------------------------------------
# CURL: collision probability, mean classifier and the multiway bound (SPEC §2)
# ---------------------------------------------------------------------------------------------


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
  """(k+1)-way mean-classifier loss and accuracy over the collision-free tuples (SPEC §2).

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


class BoundTuples(NamedTuple):
  """A finite sample for the exact CURL bound check (see `sample_bound_tuples`).

  anchor `[T]`, positive_class `[T]`, negative_classes `[T, k]`: the anchors and classes;
  positives `[T, s]`, negatives `[T, s, k]`: for each tuple, s draws of (x⁺, x⁻_1..x⁻_k)
  whose marginals are exactly uniform on the class pools; collision `[T]` (bool): which
  stratum the row belongs to; pools `[C, s]`: the s points that stand for class c;
  class_probs `[C]`: ρ.
  """
  anchor: np.ndarray
  positive_class: np.ndarray
  negative_classes: np.ndarray
  positives: np.ndarray
  negatives: np.ndarray
  collision: np.ndarray
  pools: np.ndarray
  class_probs: np.ndarray


def sample_bound_tuples(rng: np.random.Generator, labels, num_tuples: int, num_negatives: int,
                        *, class_probs=None, pool_size: Optional[int] = None) -> BoundTuples:
  """Tuples on which the CURL bound of SPEC §2 holds exactly, for every encoder.

  The population argument is: by Jensen (ℓ convex, v affine in f(x⁺), f(x⁻_i)),
  `L_un ≥ E ℓ(f(x)ᵀ(μ_{c⁺} − μ_{c⁻_i}))`; on a collision one margin is 0 so the term is
  `≥ ℓ_min`; otherwise it is the mean-classifier loss. So
  `L_un ≥ τ_k ℓ_min + (1 − τ_k) L^μ_sup,k`. This sampler makes each step exact on a sample:

  - D_c is the uniform distribution on a pool of s points of class c (`pools[c]`, drawn
    without replacement; s = `pool_size`, default the smallest class count), so
    `μ_c = mean(f(pools[c]))` exactly.
  - The expectation over classes is stratified on the collision event: `num_tuples` rows are
    drawn from the class-tuple law conditioned on no collision (c⁺ ∝ ρ(c)(1 − ρ(c))^k,
    c⁻_i i.i.d. from ρ restricted to ≠ c⁺) and `num_tuples` rows conditioned on a collision
    (c⁺ ∝ ρ(c)(1 − (1 − ρ(c))^k), first colliding index J truncated-geometric, negatives
    before J from ρ restricted to ≠ c⁺, after J from ρ), to be weighted by 1 − τ_k and τ_k.
  - Each row has an anchor uniform in its pool and s joint draws of (x⁺, x⁻_1..x⁻_k), each
    coordinate an independent random permutation of its pool: every marginal is exactly
    uniform, so the average of the s score vectors is `f(x)ᵀ(μ_{c⁺} − μ_{c⁻_i})` and Jensen
    applies row by row. (x⁺ may equal x, as two independent draws from D_c may.)

  `class_probs` is ρ over classes `0..max(labels)` (uniform if None), positive on at least
  two classes; every class needs at least `pool_size` points.
  """
  _check_generator(rng)
  members = _members(labels)
  num_tuples = _checks.positive_int("num_tuples", num_tuples)
  k = _checks.positive_int("num_negatives", num_negatives)
  probs = _check_class_probs(class_probs, members.count.size)
  if np.count_nonzero(probs) < 2:
    raise ValueError("class_probs must be > 0 on at least two classes (else every tuple "
                     f"collides and τ_k = 1), got {probs.tolist()}")
  s = int(members.count.min()) if pool_size is None else _checks.positive_int("pool_size",
                                                                               pool_size)
  if members.count.min() < s:
    raise ValueError(f"pool_size must be <= the smallest class count {members.count.min()}, "
                     f"got {s}")
  pools = np.stack([rng.choice(members.order[a:a + c], size=s, replace=False)
                    for a, c in zip(members.start, members.count)])

  free_class = _categorical(rng, probs * (1.0 - probs) ** k, (num_tuples,))
  free_negatives = _categorical(rng, _excluding(probs, free_class), (num_tuples, k))

  coll_class = _categorical(rng, probs * (1.0 - (1.0 - probs) ** k), (num_tuples,))
  p = probs[coll_class][:, None]
  first = _categorical(rng, (1.0 - p) ** np.arange(k)[None, :] * p, (num_tuples,))
  before = _categorical(rng, _excluding(probs, coll_class), (num_tuples, k))
  after = _categorical(rng, probs, (num_tuples, k))
  index = np.arange(k)[None, :]
  coll_negatives = np.where(index < first[:, None], before,
                            np.where(index == first[:, None], coll_class[:, None], after))

  positive_class = np.concatenate([free_class, coll_class])
  negative_classes = np.concatenate([free_negatives, coll_negatives])
  rows = positive_class.size
  anchor = pools[positive_class, rng.integers(s, size=rows)]
  positives = pools[positive_class[:, None], rng.permuted(np.tile(np.arange(s), (rows, 1)), axis=1)]
  shuffled = rng.permuted(np.tile(np.arange(s), (rows, k, 1)), axis=2)  # [T, k, s]
  negatives = pools[negative_classes[:, :, None], shuffled].transpose(0, 2, 1)
  collision = np.repeat([False, True], num_tuples)
  return BoundTuples(anchor, positive_class, negative_classes, positives, negatives, collision,
                     pools, probs)


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
  """Both sides of the k-negative CURL bound of SPEC §2 on a finite sample.

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


# ---------------------------------------------------------------------------------------------
# α-CL: contrastive covariance and the energy of a linear map (SPEC §6; [P004] Tian 2022)
# ---------------------------------------------------------------------------------------------


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
  """Contrastive covariance of inputs (or features) for pairwise importances α [P004]:

      C_α[x] = Σ_i Σ_{j neg of i} α_ij (x_i − x_j)(x_i − x_j)ᵀ
               − Σ_i (Σ_{j neg of i} α_ij) (x_i − x_{p(i)})(x_i − x_{p(i)})ᵀ

  on the stacked layout of SPEC §0: `x = [x1; x2]` (2B rows), `p(i) = (i + B) mod 2B`, α
  `[2B, 2B]` (rows anchors, columns stacked samples; its self and positive entries are
  ignored, i.e. treated as 0, as every α constructor in contrax sets them).

  Convention: the full sums, no ½ — so for a linear map `z = W x` (no normalisation) and
  `d²_ij = ½‖z_i − z_j‖²`, `d²_i = d²_{i,p(i)}`, the α-CL energy is

      E_α(W) = Σ_i Σ_{j neg} α_ij (d²_ij − d²_i) = ½ tr(W C_α Wᵀ),

  and for a deep linear network `W = W_L ⋯ W_1` with `‖W_l‖_F = 1` its maximum is
  `λ_max(C_α) / 2` (when λ_max > 0), attained by rank-1 layers whose product's input
  direction is C_α's top eigenvector (Tian 2022, arXiv 2201.12680: the max player is PCA on
  C_α). C_α is symmetric but may be indefinite. The energy here is SPEC §6's `Σ_i`; the
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


# ---------------------------------------------------------------------------------------------
# Generalisation (SPEC §3; [P001] Huang, Yi & Zhao 2023, "Towards the generalization of
# contrastive self-supervised learning"): class centres over samples and views, nearest-centre
# error, centre divergence and the Theorem-1 threshold, alignment, R_ε, d_A and σ̂(δ).
# Host-side NumPy (float64) on features/views computed once; the encoder runs in JAX.
# ---------------------------------------------------------------------------------------------


def sample_views(aug, key: jax.Array, images, num_views: int, *,
                 include_original: bool = True) -> np.ndarray:
  """`[S, n, H, W, C]` float32 views of `images` `[n, H, W, C]` under augmentation `aug`.

  View s uses `augment_batch(aug, fold_in(key, s), images, arange(n))`. With
  `include_original=True` view 0 is the un-augmented image (the identity is a member of every
  augmentation set A(x) used here), so S − 1 views are sampled and `d_A(x, x) = 0` holds exactly.
  """
  from contrax import augment  # local import: augment pulls in image ops only when needed
  num_views = _checks.positive_int("num_views", num_views)
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must have shape [n, H, W, C], got {images.shape}")
  ids = jnp.arange(images.shape[0])
  views = []
  if include_original:
    views.append(np.asarray(augment.to_float(images)))
  for s in range(num_views - len(views)):
    views.append(np.asarray(augment.augment_batch(aug, jax.random.fold_in(key, s), images, ids)))
  return np.stack(views)


def view_features(apply_fn, views, *, batch_size: int = 512, normalize: bool = True) -> np.ndarray:
  """Features `[S, n, d]` (float64) of views `[S, n, ...]` under `apply_fn(batch) -> [b, d]`.

  With `normalize=True` each feature is l2-normalised, so ‖f‖ = r = 1 as in SPEC §3.
  """
  views = np.asarray(views)
  batch_size = _checks.positive_int("batch_size", batch_size)
  flat = views.reshape((-1,) + views.shape[2:])
  out = [np.asarray(apply_fn(flat[i:i + batch_size]), np.float64)
         for i in range(0, flat.shape[0], batch_size)]
  feats = np.concatenate(out).reshape(views.shape[:2] + (-1,))
  if normalize:
    feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
  return feats


def _check_view_features(name: str, feats) -> np.ndarray:
  feats = np.asarray(feats, np.float64)
  if feats.ndim != 3 or feats.shape[0] < 1:
    raise ValueError(f"{name} must have shape [S, n, d] with S >= 1, got {feats.shape}")
  return feats


def _check_labels(labels, n: int, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
  if n and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                     f"[{labels.min()}, {labels.max()}]")
  return labels


def augmented_class_centres(view_feats, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """`μ_k = E_{x∈C_k} E_{x'∈A(x)} f(x')`: mean over the samples of class k and their S views.

  view_feats: `[S, n, d]`. Returns (centres `[K, d]`, class masses `p_k = n_k / n`).
  """
  feats = _check_view_features("view_feats", view_feats)
  num_classes = _checks.positive_int("num_classes", num_classes)
  labels = _check_labels(labels, feats.shape[1], num_classes)
  per_sample = feats.mean(axis=0)
  counts = np.bincount(labels, minlength=num_classes)
  sums = np.zeros((num_classes, feats.shape[2]))
  np.add.at(sums, labels, per_sample)
  return sums / np.maximum(counts, 1)[:, None], counts / max(len(labels), 1)


def nearest_centre_classify(features, centres) -> np.ndarray:
  """`G_f(x) = argmin_k ‖f(x) − μ_k‖` for features `[n, d]` and centres `[K, d]`.

  Computed as the linear classifier `argmax_k μ_kᵀ f − ½‖μ_k‖²` (same argmin, SPEC §3).
  """
  features = np.asarray(features, np.float64)
  centres = np.asarray(centres, np.float64)
  return np.argmax(features @ centres.T - 0.5 * np.sum(centres**2, axis=1), axis=1)


def nearest_centre_error(features, labels, centres) -> float:
  """`Err(G_f) = Σ_k P[G_f(x) ≠ k, x ∈ C_k]`: the fraction of misclassified samples."""
  return float(np.mean(nearest_centre_classify(features, centres) != np.asarray(labels)))


def centre_gram(centres) -> np.ndarray:
  """Gram matrix `μ_kᵀ μ_ℓ` `[K, K]` of the class centres."""
  centres = np.asarray(centres, np.float64)
  return centres @ centres.T


def max_cross_centre(centres) -> float:
  """`max_{k≠ℓ} μ_kᵀ μ_ℓ` (the left side of Theorem 1's divergence condition)."""
  gram = centre_gram(centres)
  if gram.shape[0] < 2:
    raise ValueError(f"centres must have at least 2 rows, got {gram.shape[0]}")
  return float(np.max(gram[~np.eye(gram.shape[0], dtype=bool)]))


def centre_deficit(centres, r: float = 1.0) -> float:
  """`Δ_μ = 1 − min_k ‖μ_k‖² / r²` (0 when every centre sits on the sphere of radius r)."""
  r = _checks.positive("r", r)
  centres = np.asarray(centres, np.float64)
  return float(1.0 - np.min(np.sum(centres**2, axis=1)) / r**2)


def rho_max(sigma: float, delta: float, eps: float, lipschitz: float, r: float, r_eps: float,
            min_class_prob: float) -> float:
  """`ρ_max = 2(1 − σ) + R_ε / min_ℓ p_ℓ + σ(Lδ/r + 2ε/r)` (Theorem 1 of [P001])."""
  sigma = _checks.in_range("sigma", sigma, 0.0, 1.0, include_high=True)
  delta = _checks.non_negative("delta", delta)
  eps = _checks.non_negative("eps", eps)
  lipschitz = _checks.non_negative("lipschitz", lipschitz)
  r = _checks.positive("r", r)
  r_eps = _checks.in_range("r_eps", r_eps, 0.0, 1.0, include_high=True)
  min_class_prob = _checks.positive("min_class_prob", min_class_prob)
  return 2.0 * (1.0 - sigma) + r_eps / min_class_prob + sigma * (lipschitz * delta / r
                                                                  + 2.0 * eps / r)


def divergence_threshold(sigma: float, delta: float, eps: float, lipschitz: float, r: float,
                         r_eps: float, min_class_prob: float, centre_deficit: float) -> float:
  """Theorem 1's bound on `μ_ℓᵀμ_k`: `r²(1 − ρ_max − √(2ρ_max) − Δ_μ/2)`.

  If every `μ_ℓᵀμ_k` (ℓ ≠ k) lies below it, `Err(G_f) ≤ (1 − σ) + R_ε` ([P001], Theorem 1).
  The value is often negative at CPU scale (the condition then cannot hold).
  """
  rho = rho_max(sigma, delta, eps, lipschitz, r, r_eps, min_class_prob)
  return r**2 * (1.0 - rho - math.sqrt(2.0 * rho) - centre_deficit / 2.0)


def alignment_from_views(view_feats) -> float:
  """`L_align = E_x E_{x1,x2∈A(x)} ‖f(x1) − f(x2)‖²`, averaged over the S(S−1) ordered pairs of
  distinct views of each sample (view_feats `[S, n, d]`, S ≥ 2)."""
  feats = _check_view_features("view_feats", view_feats)
  s = feats.shape[0]
  if s < 2:
    raise ValueError(f"view_feats needs S >= 2 views, got {s}")
  # Σ_{a,b} ‖f_a − f_b‖² = 2S Σ_a ‖f_a‖² − 2‖Σ_a f_a‖² per sample; the a = b terms are 0.
  total = 2 * s * np.sum(feats**2, axis=(0, 2)) - 2 * np.sum(feats.sum(axis=0)**2, axis=1)
  return float(np.mean(total) / (s * (s - 1)))


def _max_view_spread(feats: np.ndarray) -> np.ndarray:
  """`max_{a,b} ‖f_a − f_b‖` per sample, `[n]`, from `[S, n, d]`."""
  s = feats.shape[0]
  best = np.zeros(feats.shape[1])
  for a in range(s):
    for b in range(a + 1, s):
      best = np.maximum(best, np.linalg.norm(feats[a] - feats[b], axis=1))
  return best


def r_epsilon(view_feats, eps: float) -> float:
  """`R̂_ε`: fraction of samples with `max_{a,b} ‖f(x_a) − f(x_b)‖ > ε` over their S views.

  The true `R_ε` takes the sup over all of A(x); a max over S sampled views can only miss
  far pairs, so this estimate is biased low (it grows with S).
  """
  feats = _check_view_features("view_feats", view_feats)
  eps = _checks.non_negative("eps", eps)
  return float(np.mean(_max_view_spread(feats) > eps))


def _flat_views(views) -> np.ndarray:
  views = np.asarray(views, np.float64)
  if views.ndim < 2:
    raise ValueError(f"views must have shape [S, n, ...], got {views.shape}")
  return views.reshape(views.shape[0], views.shape[1], -1)


def augmented_distance(views_a, views_b) -> float:
  """`d̂_A(x1, x2) = min_{a,b} ‖x1_a − x2_b‖` over S × S views `[S, ...]` of two images.

  An upper bound of the true `d_A` (min over the whole augmentation set). The space is
  whatever the views are: pixels or a fixed feature map. Include the un-augmented image
  among the views (`sample_views(include_original=True)`) so that `d̂_A(x, x) = 0`.
  """
  a = np.asarray(views_a, np.float64).reshape(np.shape(views_a)[0], -1)
  b = np.asarray(views_b, np.float64).reshape(np.shape(views_b)[0], -1)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"views_a and views_b must have the same size per view, got "
                     f"{a.shape[1]} and {b.shape[1]}")
  return float(np.min(np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)))


def augmented_distance_matrix(views) -> np.ndarray:
  """`[n, n]` matrix of `d̂_A(x_i, x_j)` from views `[S, n, ...]` (exact differences, one
  row at a time, so the diagonal is exactly 0 when view 0 is the original image)."""
  v = _flat_views(views)
  s, n, _ = v.shape
  out = np.empty((n, n))
  for i in range(n):
    # [S, 1, 1, D] − [1, S, n, D] → min over both view axes.
    diff = v[:, i][:, None, None, :] - v[None, :, :, :]
    out[i] = np.sqrt(np.min(np.sum(diff * diff, axis=-1), axis=(0, 1)))
  return np.minimum(out, out.T)


def greedy_clique(adjacency) -> np.ndarray:
  """Indices of a large clique of an undirected graph (boolean `[m, m]`, diagonal ignored).

  Greedy: from every seed vertex, repeatedly add the candidate with the most neighbours among
  the remaining candidates (candidates = vertices adjacent to all chosen ones); keep the
  largest clique found. A heuristic lower bound of the maximum clique.
  """
  adj = np.asarray(adjacency, bool).copy()
  if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
    raise ValueError(f"adjacency must be square, got {adj.shape}")
  m = adj.shape[0]
  if m == 0:
    return np.zeros((0,), int)
  np.fill_diagonal(adj, False)
  adj = adj & adj.T
  best: list[int] = []
  for seed in range(m):
    clique = [seed]
    cand = adj[seed].copy()
    while cand.any():
      idx = np.flatnonzero(cand)
      degrees = adj[np.ix_(idx, idx)].sum(axis=1)
      v = int(idx[np.argmax(degrees)])
      clique.append(v)
      cand &= adj[v]
      cand[v] = False
    if len(clique) > len(best):
      best = clique
  return np.sort(np.asarray(best, int))


def sigma_hat(distances, labels, delta: float, num_classes: int) -> tuple[float, np.ndarray]:
  """`σ̂(δ)`: concentration of the augmented data at radius δ (our estimator, SPEC §3).

  For each class k, a greedy max-clique `C⁰_k` of the graph with edges `d_A ≤ δ` among the
  class's samples (so `sup_{x1,x2∈C⁰_k} d_A ≤ δ`); returns (`Σ_k p_k |C⁰_k| / n_k`, per-class
  fractions `|C⁰_k| / n_k` `[K]`). The paper's condition asks `|C⁰_k| ≥ σ n_k` for *every* k,
  i.e. σ = min of the per-class fractions; we report the p_k-weighted mass (what enters
  `(1 − σ)` as a mass) and return the per-class values so the minimum can be taken too.
  Greedy cliques are lower bounds of the maximum clique, and d̂_A over S views is an upper
  bound of d_A: both bias σ̂ low.
  """
  d = np.asarray(distances, np.float64)
  if d.ndim != 2 or d.shape[0] != d.shape[1]:
    raise ValueError(f"distances must be a square matrix, got {d.shape}")
  num_classes = _checks.positive_int("num_classes", num_classes)
  labels = _check_labels(labels, d.shape[0], num_classes)
  delta = _checks.non_negative("delta", delta)
  counts = np.bincount(labels, minlength=num_classes)
  fractions = np.zeros(num_classes)
  for k in range(num_classes):
    idx = np.flatnonzero(labels == k)
    if idx.size:
      fractions[k] = greedy_clique(d[np.ix_(idx, idx)] <= delta).size / idx.size
  p = counts / max(len(labels), 1)
  return float(np.sum(p * fractions)), fractions
