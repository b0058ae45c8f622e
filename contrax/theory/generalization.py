"""Generalisation diagnostics of Huang, Yi & Zhao 2023 ("Towards the generalization of
contrastive self-supervised learning"): class centres over samples and views, nearest-centre
error, centre divergence and the Theorem-1 threshold, alignment, R̂_ε, the augmented distance
d̂_A and the concentration σ̂(δ).

Host-side NumPy (float64) on features / views computed once; the encoder runs in JAX.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks, evaluate


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

  With `normalize=True` each feature is l2-normalised, so ‖f‖ = r = 1 as in Huang et al. 2023.
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


def augmented_class_centres(view_feats, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """`μ_k = E_{x∈C_k} E_{x'∈A(x)} f(x')`: mean over the samples of class k and their S views.

  view_feats: `[S, n, d]`. Returns (centres `[K, d]`, class masses `p_k = n_k / n`).
  """
  feats = _check_view_features("view_feats", view_feats)
  num_classes = _checks.positive_int("num_classes", num_classes)
  labels = _checks.labels("labels", labels, size=feats.shape[1], num_classes=num_classes)
  centres, _ = evaluate.class_centres(feats.mean(axis=0), labels, num_classes)
  return centres, np.bincount(labels, minlength=num_classes) / max(len(labels), 1)


def nearest_centre_error(features, labels, centres) -> float:
  """`Err(G_f) = Σ_k P[G_f(x) ≠ k, x ∈ C_k]`: the fraction of misclassified samples."""
  return float(np.mean(evaluate.nearest_centre_classify(features, centres) != np.asarray(labels)))


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
  """`ρ_max = 2(1 − σ) + R_ε / min_ℓ p_ℓ + σ(Lδ/r + 2ε/r)` (Theorem 1 of Huang et al. 2023)."""
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

  If every `μ_ℓᵀμ_k` (ℓ ≠ k) lies below it, `Err(G_f) ≤ (1 − σ) + R_ε`
  (Huang et al. 2023, Theorem 1).
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
  """`σ̂(δ)`: concentration of the augmented data at radius δ (our estimator of Huang et al. 2023's σ).

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
  labels = _checks.labels("labels", labels, size=d.shape[0], num_classes=num_classes)
  delta = _checks.non_negative("delta", delta)
  counts = np.bincount(labels, minlength=num_classes)
  fractions = np.zeros(num_classes)
  for k in range(num_classes):
    idx = np.flatnonzero(labels == k)
    if idx.size:
      fractions[k] = greedy_clique(d[np.ix_(idx, idx)] <= delta).size / idx.size
  p = counts / max(len(labels), 1)
  return float(np.sum(p * fractions)), fractions
