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
