"""Known-MI tasks: the ground truth for the estimators of `contrax.mi.estimators`.

Correlated Gaussians (and the MI-preserving cubic map) with their exact MI and optimal critic,
the exact MI of linear features of Gaussians, and image pairs whose MI is set by labels
through a binary symmetric channel (our reconstruction of the tasks of Lee et al. 2024, whose
exact statements could not be read).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks
from contrax.mi.critics import _check_pairs

LOG2 = math.log(2.0)


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def gaussian_correlation(mi_nats: float, dim: int) -> float:
  """Per-dimension correlation `ρ = sqrt(1 − exp(−2I/d))` giving `I` nats over `d` dimensions."""
  mi_nats = _checks.non_negative("mi_nats", mi_nats)
  dim = _checks.positive_int("dim", dim)
  return math.sqrt(-math.expm1(-2.0 * mi_nats / dim))


def _check_rho(rho) -> jax.Array:
  if not hasattr(rho, "shape"):
    rho = np.asarray(rho, np.float64)
  _checks.rank("rho", rho, 1)
  if rho.shape[0] < 1:
    raise ValueError(f"rho must hold at least one correlation, got shape {rho.shape}")
  if not _is_traced(rho):
    values = np.asarray(rho)
    if not (np.all(np.isfinite(values)) and np.all(np.abs(values) < 1)):
      raise ValueError(f"rho must hold correlations in (-1, 1), got {values}")
  return rho


def gaussian_mi(rho) -> float:
  """`I(X; Y) = −½ Σ_i log(1 − ρ_i²)` nats for unit Gaussians correlated dimension-wise."""
  rho = np.asarray(_check_rho(rho), np.float64)
  return float(-0.5 * np.sum(np.log1p(-rho**2)))


def correlated_gaussian(key: jax.Array, num_samples: int, rho, *, cubic: bool = False
                        ) -> tuple[jax.Array, jax.Array]:
  """K pairs `x ~ N(0, I)`, `y = ρ ⊙ x + sqrt(1 − ρ²) ⊙ ε` (so `corr(x_i, y_i) = ρ_i`).

  `cubic=True` returns `y³`, an invertible map that leaves I(X; Y) unchanged. `rho` may be
  traced (a schedule inside `jit`); concrete values are checked to lie in (−1, 1).
  """
  num_samples = _checks.positive_int("num_samples", num_samples)
  rho = jnp.asarray(_check_rho(rho), jnp.float32)
  kx, ke = jax.random.split(key)
  shape = (num_samples, rho.shape[0])
  x = jax.random.normal(kx, shape)
  y = rho * x + jnp.sqrt(1.0 - rho**2) * jax.random.normal(ke, shape)
  return x, (y**3 if cubic else y)


def gaussian_log_density_ratio(x: jax.Array, y: jax.Array, rho, *, cubic: bool = False
                               ) -> jax.Array:
  """The optimal critic `S_ij = log p(x_i, y_j) / (p(x_i) p(y_j))` for `correlated_gaussian`.

  Per dimension, `−½ log(1 − ρ²) − (ρ²(x² + y²) − 2ρxy) / (2(1 − ρ²))`, summed; with
  `cubic=True`, y is mapped back by the cube root (the Jacobians cancel in the ratio).
  """
  _check_pairs(x, y)
  rho = jnp.asarray(_check_rho(rho), x.dtype)
  if x.shape[1] != rho.shape[0] or y.shape[1] != rho.shape[0]:
    raise ValueError(f"x and y must have one column per correlation in rho "
                     f"({rho.shape[0]}), got x{x.shape} and y{y.shape}")
  if cubic:
    y = jnp.cbrt(y)
  a = rho / (1.0 - rho**2)
  b = rho**2 / (2.0 * (1.0 - rho**2))
  const = -0.5 * jnp.sum(jnp.log1p(-rho**2))
  cross = (x * a) @ y.T
  return const + cross - jnp.sum(b * x**2, axis=1)[:, None] - jnp.sum(b * y**2, axis=1)[None, :]


def _check_covariance(name: str, cov) -> np.ndarray:
  cov = np.asarray(cov, np.float64)
  _checks.rank(name, cov, 2)
  if cov.shape[0] != cov.shape[1]:
    raise ValueError(f"{name} must be square, got shape {cov.shape}")
  if not np.allclose(cov, cov.T, atol=1e-8 * max(1.0, np.abs(cov).max())):
    raise ValueError(f"{name} must be symmetric")
  return cov


def _logdet(name: str, matrix: np.ndarray) -> float:
  sign, logdet = np.linalg.slogdet(matrix)
  if sign <= 0:
    raise ValueError(f"{name} must be positive definite (its determinant is not > 0)")
  return float(logdet)


def gaussian_mi_from_covariance(cov, dim_x: int) -> float:
  """Exact `I(Z1; Z2) = ½[log det Σ11 + log det Σ22 − log det Σ]` nats for jointly Gaussian
  `(Z1, Z2)` with covariance `cov`, Z1 being the first `dim_x` coordinates (float64)."""
  cov = _check_covariance("cov", cov)
  dim_x = _checks.positive_int("dim_x", dim_x)
  if dim_x >= cov.shape[0]:
    raise ValueError(f"dim_x must be < {cov.shape[0]} (the size of cov), got {dim_x}")
  return 0.5 * (_logdet("cov[:dim_x, :dim_x]", cov[:dim_x, :dim_x])
                + _logdet("cov[dim_x:, dim_x:]", cov[dim_x:, dim_x:]) - _logdet("cov", cov))


def linear_features_mi(rho, w1, w2=None) -> float:
  """Exact MI (nats) of linear features `Z1 = W1 x`, `Z2 = W2 y` of `correlated_gaussian` pairs.

  `w1`, `w2` are `[features, d]` (`w2=None` means a shared encoder, `W2 = W1`). With
  `D = diag(ρ)`: `Σ11 = W1 W1ᵀ`, `Σ22 = W2 W2ᵀ`, `Σ12 = W1 D W2ᵀ`, then
  `gaussian_mi_from_covariance`. Rank-deficient features raise (their MI needs a rank
  reduction first). Computed in float64 on the host.
  """
  rho = np.asarray(_check_rho(rho), np.float64)
  w1 = np.asarray(w1, np.float64)
  w2 = w1 if w2 is None else np.asarray(w2, np.float64)
  for name, w in (("w1", w1), ("w2", w2)):
    _checks.rank(name, w, 2)
    if w.shape[1] != rho.shape[0]:
      raise ValueError(f"{name} must have shape [features, {rho.shape[0]}], got {w.shape}")
  s11, s22, s12 = w1 @ w1.T, w2 @ w2.T, (w1 * rho) @ w2.T
  cov = np.block([[s11, s12], [s12.T, s22]])
  return gaussian_mi_from_covariance(cov, w1.shape[0])



def binary_entropy_bits(p) -> np.ndarray:
  """`H_b(p) = −p log2 p − (1 − p) log2(1 − p)` bits, with `H_b(0) = H_b(1) = 0`."""
  p = np.asarray(p, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
  return np.where((p == 0) | (p == 1), 0.0, h)


def _check_flip_prob(flip_prob, num_bits: int) -> np.ndarray:
  probs = np.asarray(flip_prob, np.float64)
  if probs.ndim == 0:
    probs = np.full(num_bits, float(probs))
  if probs.shape != (num_bits,):
    raise ValueError(f"flip_prob must be a number or hold num_bits={num_bits} probabilities, "
                     f"got shape {probs.shape}")
  if not (np.all(np.isfinite(probs)) and np.all(probs >= 0) and np.all(probs <= 0.5)):
    raise ValueError(f"flip_prob must lie in [0, 0.5] (0.5: independent bits), got {flip_prob!r}")
  return probs


def label_channel_mi(num_bits: int, flip_prob, *, unit: str = "nats") -> float:
  """`I = Σ_k (1 − H_b(p_k))` bits (`= n(1 − H_b(p))` for one p) between the two views.

  n independent fair bits; the second view's bit k is flipped with probability `p_k`.
  """
  num_bits = _checks.positive_int("num_bits", num_bits)
  _checks.choice("unit", unit, ("nats", "bits"))
  bits = float(np.sum(1.0 - binary_entropy_bits(_check_flip_prob(flip_prob, num_bits))))
  return bits * (LOG2 if unit == "nats" else 1.0)


@flax.struct.dataclass
class LabelChannel:
  """A pool of images split into two classes and the channel between the views' labels.

  images: `[N, H, W, C]` uint8 pool. class_rows: `[2, M]` pool rows of each class (padded by
  repetition; only the first `class_count[c]` entries are used). flip_prob: `[n]`.
  """
  images: jax.Array
  class_rows: jax.Array
  class_count: jax.Array
  flip_prob: jax.Array
  num_bits: int = flax.struct.field(pytree_node=False)

  @property
  def mi_nats(self) -> float:
    return label_channel_mi(self.num_bits, np.asarray(self.flip_prob))


def label_channel(images, labels, *, num_bits: int, flip_prob, classes: Sequence[int] = (0, 1)
                  ) -> LabelChannel:
  """Image pairs whose MI is set by labels through a binary symmetric channel.

  A view is `num_bits` image tiles side by side; tile k shows a random image of
  `classes[b_k]` for a fair bit `b_k`. The second view flips each bit with probability
  `flip_prob` (a number or one per bit) and draws *different* images: a new image of the same
  class when the bit is kept. As long as no image appears in both classes, the label is a
  function of the image and the views are independent given the labels, so
  `I(X1; X2) = I(L1; L2) = Σ_k (1 − H_b(p_k))` bits (up to the negligible dependence that
  "different image" adds on a finite pool). Works on any `(images, labels)` arrays, e.g.
  `contrax.data.load('digits')` or `load('folder:PATH')` splits. With `p_k = 0.5` bit k is
  unshared (view-specific); with `p_k = 0` it is fully shared.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(f"images must be uint8 [N, H, W, C], got dtype {images.dtype}")
  _checks.rank("images", images, 4)
  labels = _checks.labels("labels", labels)
  if len(labels) != len(images):
    raise ValueError(f"images and labels must have the same length, got {len(images)} and "
                     f"{len(labels)}")
  num_bits = _checks.positive_int("num_bits", num_bits)
  probs = _check_flip_prob(flip_prob, num_bits)
  classes = tuple(classes)
  if len(classes) != 2 or classes[0] == classes[1]:
    raise ValueError(f"classes must name two different classes, got {classes!r}")
  rows = [np.flatnonzero(labels == c) for c in classes]
  for c, r in zip(classes, rows):
    if len(r) < 2:
      raise ValueError(f"classes: class {c!r} has {len(r)} images in labels; at least 2 are "
                       f"needed (positives are two different images)")
  width = max(len(r) for r in rows)
  class_rows = np.stack([np.resize(r, width) for r in rows]).astype(np.int32)
  return LabelChannel(images=jnp.asarray(images), class_rows=jnp.asarray(class_rows),
                      class_count=jnp.asarray([len(r) for r in rows], jnp.int32),
                      flip_prob=jnp.asarray(probs, jnp.float32), num_bits=num_bits)


def _tile(images: jax.Array) -> jax.Array:
  """`[P, n, H, W, C]` → `[P, H, n·W, C]`: the n tiles side by side."""
  p, n, h, w, c = images.shape
  return jnp.transpose(images, (0, 2, 1, 3, 4)).reshape(p, h, n * w, c)


def sample_label_channel(key: jax.Array, channel: LabelChannel, num_pairs: int
                         ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`(x1, x2, bits1, bits2)`: uint8 views `[P, H, n·W, C]` and their int32 bits `[P, n]`.

  Pure and jittable (static shapes: positions are drawn as `floor(u · count)`).
  """
  num_pairs = _checks.positive_int("num_pairs", num_pairs)
  if not isinstance(channel, LabelChannel):
    raise TypeError(f"channel must be a LabelChannel (from label_channel()), got "
                    f"{type(channel).__name__}")
  shape = (num_pairs, channel.num_bits)
  k_bits, k_flip, k_pos1, k_offset, k_pos2 = jax.random.split(key, 5)
  bits1 = jax.random.bernoulli(k_bits, 0.5, shape).astype(jnp.int32)
  flips = jax.random.bernoulli(k_flip, channel.flip_prob, shape).astype(jnp.int32)
  bits2 = bits1 ^ flips
  count1 = channel.class_count[bits1]
  count2 = channel.class_count[bits2]

  def position(k, n):
    return jnp.minimum(jnp.floor(jax.random.uniform(k, shape) * n).astype(jnp.int32), n - 1)

  pos1 = position(k_pos1, count1)
  other_same = (pos1 + 1 + position(k_offset, count1 - 1)) % count1
  pos2 = jnp.where(flips == 0, other_same, position(k_pos2, count2))
  x1 = _tile(channel.images[channel.class_rows[bits1, pos1]])
  x2 = _tile(channel.images[channel.class_rows[bits2, pos2]])
  return x1, x2, bits1, bits2



def flatten_views(images: jax.Array) -> jax.Array:
  """uint8 views `[P, H, W, C]` → float32 rows `[P, H·W·C]` in [0, 1] (an MLP's inputs)."""
  _checks.rank("images", images, 4)
  return images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0


def label_channel_views(channel: LabelChannel) -> Callable:
  """`(key, num_pairs) -> (x1, x2)`: `flatten_views` of `num_pairs` sampled pairs of `channel`
  (a pair sampler for `contrax.mi.infonce_step`; pure and jittable)."""

  def sample_views(key, num_pairs):
    x1, x2, _, _ = sample_label_channel(key, channel, num_pairs)
    return flatten_views(x1), flatten_views(x2)

  return sample_views
