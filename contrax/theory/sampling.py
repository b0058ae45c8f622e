"""Latent-class vector data and CURL tuple samplers for the theory studies.

Host-side NumPy with an explicit `np.random.Generator`: `latent_class_points`, `to_sphere`,
`sample_tuples` (fixed CURL tuples) and `sample_bound_tuples` (tuples on which the CURL bound
of Arora et al. 2019 / Merad et al. 2020 holds exactly; see `contrax.theory.curl`).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from contrax import _checks


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
  """Points grouped by class: `order[start[c] : start[c] + sizes[c]]` are class c's points."""
  labels: np.ndarray
  order: np.ndarray
  start: np.ndarray
  sizes: np.ndarray  # not `count`, which would shadow tuple.count
  rank: np.ndarray  # rank[i]: position of point i within its class


def _members(labels) -> _Members:
  labels = _checks.labels("labels", labels)
  if labels.size == 0:
    raise ValueError("labels must hold at least one label, got shape (0,)")
  order = np.argsort(labels, kind="stable")
  sizes = np.bincount(labels)
  start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  rank = np.empty(labels.size, np.int64)
  rank[order] = np.arange(labels.size) - start[labels[order]]
  return _Members(labels, order, start, sizes, rank)


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
  r = np.floor(rng.random(classes.shape) * (members.sizes[classes] - excluded)).astype(np.int64)
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
  """Fixed CURL tuples over a labelled point set (Arora et al. 2019).

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
  probs = _check_class_probs(class_probs, members.sizes.size)
  counts = members.sizes
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
  """Tuples on which the CURL bound `L^μ_sup,k ≤ (L_un − τ_k ℓ_min) / (1 − τ_k)` holds exactly,
  for every encoder.

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
  probs = _check_class_probs(class_probs, members.sizes.size)
  if np.count_nonzero(probs) < 2:
    raise ValueError("class_probs must be > 0 on at least two classes (else every tuple "
                     f"collides and τ_k = 1), got {probs.tolist()}")
  s = int(members.sizes.min()) if pool_size is None else _checks.positive_int("pool_size",
                                                                               pool_size)
  if members.sizes.min() < s:
    raise ValueError(f"pool_size must be <= the smallest class count {members.sizes.min()}, "
                     f"got {s}")
  pools = np.stack([rng.choice(members.order[a:a + c], size=s, replace=False)
                    for a, c in zip(members.start, members.sizes)])

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
