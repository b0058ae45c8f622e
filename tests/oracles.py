"""Shared float64 NumPy helpers for the oracle tests: central finite differences, errors."""
import numpy as np


def fd_grad(f, *arrays, h=1e-6):
  """Central finite-difference gradient of scalar `f(*arrays)` w.r.t. each array, in float64."""
  grads = []
  for k, a in enumerate(arrays):
    g = np.zeros(a.shape)
    for idx in np.ndindex(a.shape):
      plus = [np.array(x, np.float64) for x in arrays]
      minus = [np.array(x, np.float64) for x in arrays]
      plus[k][idx] += h
      minus[k][idx] -= h
      g[idx] = (f(*plus) - f(*minus)) / (2 * h)
    grads.append(g)
  return grads


def rel_err(got, want):
  """‖got − want‖ / ‖want‖ over all arrays of the two sequences, flattened together."""
  got = np.concatenate([np.ravel(g) for g in got])
  want = np.concatenate([np.ravel(w) for w in want])
  return np.linalg.norm(got - want) / np.linalg.norm(want)


def on_views(weighting):
  """`weighting(pairs, **hyper)` as a function of views: `(z1, z2, *, axis_name=None, **hyper)`."""
  from contrax import pairs

  def of_views(z1, z2, *, axis_name=None, **hyper):
    return weighting(pairs.build(z1, z2, axis_name=axis_name), **hyper)
  return of_views


def rankme(z, eps=1e-7):
  """RankMe (Garrido et al. 2023) in float64: exp(-Σ p_k log p_k), p_k = σ_k / Σ σ + eps."""
  singular = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
  p = singular / singular.sum() + eps
  return float(np.exp(-np.sum(p * np.log(p))))


def normalized_std(z):
  """Mean over dimensions of the population std over rows of z_i / ‖z_i‖ (Chen & He 2021)."""
  z = np.asarray(z, np.float64)
  u = z / np.linalg.norm(z, axis=1, keepdims=True)
  return float(np.mean(np.std(u, axis=0)))


def softmax_cross_entropy_grads(h, labels, kernel, bias):
  """Mean cross-entropy of `h @ kernel + bias` and its gradients, written out in float64:
  d/dlogits = (softmax - onehot) / n."""
  h, kernel, bias = (np.asarray(a, np.float64) for a in (h, kernel, bias))
  logits = h @ kernel + bias
  logits -= logits.max(axis=1, keepdims=True)
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  onehot = np.eye(kernel.shape[1])[np.asarray(labels)]
  n = h.shape[0]
  loss = -np.sum(onehot * np.log(probs)) / n
  dlogits = (probs - onehot) / n
  return loss, h.T @ dlogits, dlogits.sum(axis=0)


def pil_bilinear_resize(image, box, size):
  """float64 `[size, size, C]`: the `box` = (x0, y0, x1, y1) of `image` `[H, W, C]` resized by
  the antialiased bilinear (triangle) filter, written from Pillow's resampling definition
  (Resample.c): along each axis, output pixel i has centre c = x0 + (i + 1/2) s with
  s = (x1 - x0) / size, and averages the input pixels x with |x + 1/2 - c| < max(s, 1) with
  weights tri((x + 1/2 - c) / max(s, 1)), tri(t) = max(0, 1 - |t|), normalised to sum 1
  (inputs outside the image are not used). Width first, then height; no rounding between."""
  image = np.asarray(image, np.float64)

  def matrix(start, stop, in_size):
    scale = (stop - start) / size
    support = max(scale, 1.0)
    m = np.zeros((size, in_size))
    for i in range(size):
      centre = start + (i + 0.5) * scale
      lo = max(int(centre - support + 0.5), 0)
      hi = min(int(centre + support + 0.5), in_size)
      x = np.arange(lo, hi)
      w = np.maximum(0.0, 1.0 - np.abs((x - centre + 0.5) / support))
      m[i, lo:hi] = w / w.sum()
    return m

  x0, y0, x1, y1 = box
  cols = matrix(x0, x1, image.shape[1])
  rows = matrix(y0, y1, image.shape[0])
  return np.einsum("ih,hwc,jw->ijc", rows, image, cols)
