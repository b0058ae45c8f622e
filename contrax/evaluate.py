"""Evaluation of frozen encoders: feature extraction, linear probe, kNN, nearest centre.

All three classifiers take plain NumPy features, so the encoder is frozen by construction
(no gradient can reach it). `evaluate_all` runs the whole protocol on a dataset with `train`
and `test` splits. The test split is used only to score; every choice (standardisation
statistics, the linear probe's L2 penalty) is made on training data.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Optional, Sequence, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from contrax import _checks, data

__all__ = [
    "extract_features", "DEFAULT_L2_GRID", "logistic_objective", "linear_probe", "knn_predict",
    "knn", "class_centres", "nearest_centre_classify", "nearest_centre_predict", "nearest_centre",
    "evaluate_all",
]


def _check_features(names: Sequence[str], x, y, num_classes: Optional[int] = None):
  """Eager checks of one (features [n, d], labels [n]) pair; returns them as NumPy arrays."""
  x_name, y_name = names
  x = np.asarray(x)
  y = np.asarray(y)
  _checks.rank(x_name, x, 2)
  _checks.rank(y_name, y, 1)
  if x.shape[0] != y.shape[0] or x.shape[0] == 0:
    raise ValueError(f"{x_name} and {y_name} must have the same non-zero number of rows, "
                     f"got {x.shape} and {y.shape}")
  y = _checks.labels(y_name, y, num_classes=num_classes)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{x_name} must be finite")
  return x, y


def _check_train(train_x, train_y, num_classes: Optional[int]):
  """Checks training features; `num_classes` defaults to max(train_y) + 1 (never test labels)."""
  train_x, train_y = _check_features(("train_x", "train_y"), train_x, train_y)
  num_classes = (int(train_y.max()) + 1 if num_classes is None
                 else _checks.positive_int("num_classes", num_classes))
  train_x, train_y = _check_features(("train_x", "train_y"), train_x, train_y, num_classes)
  return train_x, train_y, num_classes


def _check_queries(test_x, dim: int) -> np.ndarray:
  test_x = _checks.rank("test_x", np.asarray(test_x), 2)
  if test_x.shape[1] != dim or test_x.shape[0] == 0:
    raise ValueError(f"test_x must be [n > 0, {dim}] (the feature dimension of train_x), "
                     f"got shape {test_x.shape}")
  if not np.all(np.isfinite(test_x)):
    raise ValueError("test_x must be finite")
  return test_x


def _check_pair(train_x, train_y, test_x, test_y, num_classes: Optional[int]):
  """Checks train and test features and labels against each other."""
  train_x, train_y, num_classes = _check_train(train_x, train_y, num_classes)
  test_x = _check_queries(test_x, train_x.shape[1])
  test_x, test_y = _check_features(("test_x", "test_y"), test_x, test_y, num_classes)
  return train_x, train_y, test_x, test_y, num_classes


def _padded_batches(n: int, batch_size: int):
  """(start, stop) of fixed-size batches covering [0, n); the last one is padded by the caller."""
  return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """Repeat the last row so that `x` has exactly `rows` rows (one compiled shape per call site)."""
  if x.shape[0] == rows:
    return x
  return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)])


# ---------------------------------------------------------------------------------------------
# Features


@functools.partial(jax.jit, static_argnums=0)
def _encode(model: nn.Module, variables: Any, images: jax.Array) -> jax.Array:
  # Module-level and keyed on the (hashable) module, so repeated evaluations during training
  # reuse one compilation instead of tracing a fresh closure per call.
  if jnp.issubdtype(images.dtype, jnp.integer):
    images = images.astype(jnp.float32) / 255.0
  # Without `mutable`, apply returns the method's output alone (its annotation is the union
  # of that and the (output, mutated variables) pair it returns with `mutable`).
  return cast(jax.Array, model.apply(variables, images, train=False, method="encode"))


def extract_features(model: nn.Module, variables: Any, split, *,
                     batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Encoder features `f(x)` (eval mode, running BN statistics) of every image of `split`.

  `split` is any object with `len(split)` and `split[indices] -> (images, labels)` (e.g.
  `contrax.data.ArraySplit`); uint8 images are mapped to [0, 1] by `x / 255` inside the
  jitted apply (floating images are taken as already in [0, 1]). The apply is
  `model.apply(variables, x, train=False, method='encode')`, compiled once per (model, batch
  shape) across calls: the last batch is padded to the fixed batch size and the padding dropped.

  Returns float32 features `[n, D]` and int labels `[n]` in split order.
  """
  batch_size = _checks.positive_int("batch_size", batch_size)
  n = len(split)
  if n == 0:
    raise ValueError("split must contain at least one example, got len(split) = 0")
  batch_size = min(batch_size, n)
  features, labels = [], []
  for start, stop in _padded_batches(n, batch_size):
    images, batch_labels = split[np.arange(start, stop)]
    images = np.asarray(images)
    if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
      raise TypeError(f"split images must be uint8 (or floating in [0, 1]), got dtype "
                      f"{images.dtype}")
    out = _encode(model, variables, _pad_rows(images, batch_size))
    features.append(np.asarray(out, np.float32)[:stop - start])
    labels.append(np.asarray(batch_labels))
  return np.concatenate(features), np.concatenate(labels)


# ---------------------------------------------------------------------------------------------
# Linear probe

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _standardise(fit_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
  """Standardise every array with the mean and standard deviation of `fit_x` (per feature)."""
  mean = fit_x.mean(axis=0)
  std = fit_x.std(axis=0)
  std = np.where(std > 1e-8, std, 1.0)  # constant features stay constant (zero) instead of NaN
  return [((x - mean) / std).astype(np.float32) for x in (fit_x, *others)]


def logistic_objective(params, x, y_onehot, l2):
  """Mean multinomial cross-entropy plus `l2/2 ||W||²` (the bias is not penalised)."""
  w, b = params
  logits = x @ w + b
  ce = -jnp.mean(jnp.sum(y_onehot * jax.nn.log_softmax(logits), axis=-1))
  return ce + 0.5 * l2 * jnp.sum(jnp.square(w))


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_logistic(x, y, l2, *, num_classes: int, steps: int, tol: float = 1e-6):
  """Full-batch L-BFGS (optax, zoom line search) on `logistic_objective` from zero weights.

  Stops after `steps` iterations or when the gradient norm falls below `tol`.
  """
  y_onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)
  objective = lambda p: logistic_objective(p, x, y_onehot, l2)
  params = (jnp.zeros((x.shape[1], num_classes), x.dtype), jnp.zeros((num_classes,), x.dtype))
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    params, state, _, i = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=objective)
    return optax.apply_updates(params, updates), state, optax.tree.norm(grad), i + 1

  def keep_going(carry):
    _, _, grad_norm, i = carry
    return (i < steps) & (grad_norm > tol)

  init = (params, solver.init(params), jnp.asarray(jnp.inf, x.dtype), 0)
  params, _, _, _ = jax.lax.while_loop(keep_going, step, init)
  return params


def _logistic_predict(params, x: np.ndarray) -> np.ndarray:
  w, b = params
  return np.asarray(jnp.argmax(x @ w + b, axis=-1))


def linear_probe(train_x, train_y, test_x, test_y, *, num_classes: Optional[int] = None,
                 val_fraction: float = 0.2, l2_grid: Sequence[float] = DEFAULT_L2_GRID,
                 seed: int = 0, steps: int = 500) -> dict:
  """Linear probe: standardised features, L2-regularised multinomial logistic regression.

  Objective (full batch, L-BFGS): `(1/n) Σ_i CE(W x_i + b, y_i) + (l2/2) ||W||²_F`; the bias
  is not penalised. This is scikit-learn's `LogisticRegression(C=1/(n·l2))` objective divided
  by `C·n` (same minimiser).

  Protocol: a stratified validation split (`val_fraction` of the training set, every class
  in proportion; `contrax.data.stratified_split` with `seed`) is carved from the *training*
  set; for each `l2` in `l2_grid` the probe is fit
  on the rest (standardised with the rest's statistics) and scored on the validation part.
  The `l2` with the best validation accuracy wins (ties go to the larger `l2`); the probe
  is refit on all training data (standardised with its statistics) and scored on the test
  set, which influences nothing before that score.

  `steps` caps the L-BFGS iterations of each fit (it also stops once the gradient norm is
  below 1e-6). Cost: `len(l2_grid) + 1` fits, each compiled once per data shape.

  Returns `{'accuracy': test accuracy, 'l2': chosen l2, 'val_accuracy': its validation
  accuracy, 'val_accuracies': {l2: accuracy}, 'train_accuracy': refit training accuracy}`.
  """
  train_x, train_y, test_x, test_y, num_classes = _check_pair(train_x, train_y, test_x, test_y,
                                                              num_classes)
  _checks.in_range("val_fraction", val_fraction, 0.0, 1.0, include_low=False)
  steps = _checks.positive_int("steps", steps)
  l2_grid = tuple(float(_checks.positive("l2_grid entry", l2)) for l2 in l2_grid)
  if not l2_grid:
    raise ValueError("l2_grid must hold at least one positive value, got ()")

  fit_idx, val_idx = data.stratified_split(train_y, test_fraction=val_fraction, seed=seed,
                                           what="train_y")
  fit_x, val_x = _standardise(train_x[fit_idx], train_x[val_idx])
  fit_y, val_y = train_y[fit_idx], train_y[val_idx]
  val_accuracies = {}
  for l2 in l2_grid:
    params = _fit_logistic(jnp.asarray(fit_x), jnp.asarray(fit_y), l2, num_classes=num_classes,
                           steps=steps)
    val_accuracies[l2] = float(np.mean(_logistic_predict(params, val_x) == val_y))
  best = max(val_accuracies.values())
  chosen = max(l2 for l2, acc in val_accuracies.items() if acc == best)

  all_x, all_test_x = _standardise(train_x, test_x)
  params = _fit_logistic(jnp.asarray(all_x), jnp.asarray(train_y), chosen,
                         num_classes=num_classes, steps=steps)
  return {
      "accuracy": float(np.mean(_logistic_predict(params, all_test_x) == test_y)),
      "l2": chosen,
      "val_accuracy": val_accuracies[chosen],
      "val_accuracies": val_accuracies,
      "train_accuracy": float(np.mean(_logistic_predict(params, all_x) == train_y)),
  }


# ---------------------------------------------------------------------------------------------
# kNN


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_votes(bank, bank_onehot, queries, *, k: int, temperature: float, num_classes: int):
  """Class votes `Σ_{j ∈ top-k(i)} exp(s_ij / t) [y_j = c]` of each query row."""
  normalise = lambda z: z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, -1, keepdims=True), 1e-24))
  sims = normalise(queries) @ normalise(bank).T
  top_sims, top_idx = jax.lax.top_k(sims, k)
  # exp(s/t) up to a per-query factor (which leaves the argmax unchanged): no underflow at small t.
  weights = jnp.exp((top_sims - top_sims[:, :1]) / temperature)
  return jnp.einsum("qk,qkc->qc", weights, bank_onehot[top_idx])


def knn_predict(train_x, train_y, test_x, *, k: int = 200, temperature: float = 0.1,
                num_classes: Optional[int] = None, batch_size: int = 256) -> np.ndarray:
  """Weighted kNN predictions (Wu et al. 2018, "Unsupervised feature learning via
  non-parametric instance discrimination").

  Features are L2-normalised; for query q the k training rows with the largest cosine
  similarity `s_j` vote for their class with weight `exp(s_j / temperature)`; the class
  with the largest total wins (ties: the smaller class index). Queries run in fixed-size
  batches of `batch_size` (the last one padded).

  `k` larger than the memory bank (`len(train_x)` rows) emits a `UserWarning` naming both and
  uses `k = len(train_x)`, i.e. every training row votes (the classifier is then the
  similarity-weighted class vote of the whole bank, not a k-nearest-neighbour vote).
  """
  train_x, train_y, num_classes = _check_train(train_x, train_y, num_classes)
  test_x = _check_queries(test_x, train_x.shape[1])
  k = _checks.positive_int("k", k)
  if k > train_x.shape[0]:
    warnings.warn(f"k={k} exceeds the memory bank of {train_x.shape[0]} training rows; using "
                  f"k={train_x.shape[0]} (every training row votes)", UserWarning, stacklevel=2)
    k = train_x.shape[0]
  temperature = _checks.positive("temperature", temperature)
  batch_size = min(_checks.positive_int("batch_size", batch_size), test_x.shape[0])

  bank = jnp.asarray(train_x, jnp.float32)
  bank_onehot = jax.nn.one_hot(jnp.asarray(train_y), num_classes, dtype=jnp.float32)
  predictions = []
  for start, stop in _padded_batches(test_x.shape[0], batch_size):
    queries = jnp.asarray(_pad_rows(test_x[start:stop], batch_size), jnp.float32)
    votes = _knn_votes(bank, bank_onehot, queries, k=k, temperature=temperature,
                       num_classes=num_classes)
    predictions.append(np.asarray(jnp.argmax(votes, axis=-1))[:stop - start])
  return np.concatenate(predictions)


def knn(train_x, train_y, test_x, test_y, *, k: int = 200, temperature: float = 0.1,
        num_classes: Optional[int] = None, batch_size: int = 256) -> float:
  """Top-1 accuracy of `knn_predict` on (test_x, test_y) (defaults k = 200, t = 0.1: Wu et al.
  2018)."""
  train_x, train_y, test_x, test_y, num_classes = _check_pair(train_x, train_y, test_x, test_y,
                                                              num_classes)
  predictions = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature,
                            num_classes=num_classes, batch_size=batch_size)
  return float(np.mean(predictions == test_y))


# ---------------------------------------------------------------------------------------------
# Nearest centre


def class_centres(features, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Class means `μ_k = mean_{i: y_i = k} f_i` of `features [n, d]` (float64, `[K, d]`) and a
  mask `[K]` of the classes that have members (the centre of an empty class is 0).

  The one class-centre computation of contrax: `contrax.theory` averages over views first
  and calls this.
  """
  features = np.asarray(features, np.float64)
  counts = np.bincount(labels, minlength=num_classes)
  sums = np.zeros((num_classes, features.shape[1]))
  np.add.at(sums, labels, features)
  return sums / np.maximum(counts, 1)[:, None], counts > 0


def nearest_centre_classify(features, centres, present=None) -> np.ndarray:
  """`G_f(x) = argmin_k ‖f(x) − μ_k‖` for features `[n, d]` and centres `[K, d]` (float64).

  Computed as the linear classifier `argmax_k μ_kᵀ f − ½‖μ_k‖²` (the same argmin: `‖f‖²` does
  not depend on k). Classes with `present[k] = False` (a boolean mask `[K]`) are never chosen.
  """
  features = np.asarray(features, np.float64)
  centres = np.asarray(centres, np.float64)
  scores = features @ centres.T - 0.5 * np.sum(centres**2, axis=1)
  if present is not None:
    scores = np.where(present, scores, -np.inf)
  return np.argmax(scores, axis=1)


def nearest_centre_predict(train_x, train_y, test_x, *,
                           num_classes: Optional[int] = None) -> np.ndarray:
  """`G_f(x) = argmin_k ||f(x) - μ_k||` with `μ_k` the class means of the training features.

  Huang et al. 2023 define μ_k over samples and augmented views; on frozen un-augmented
  features this is the mean over training samples. Classes without training examples are
  never predicted.
  """
  train_x, train_y, num_classes = _check_train(train_x, train_y, num_classes)
  test_x = _check_queries(test_x, train_x.shape[1])
  centres, present = class_centres(train_x, train_y, num_classes)
  return nearest_centre_classify(test_x, centres, present)


def nearest_centre(train_x, train_y, test_x, test_y, *,
                   num_classes: Optional[int] = None) -> float:
  """Accuracy of the nearest-centre classifier `nearest_centre_predict` on (test_x, test_y)."""
  train_x, train_y, test_x, test_y, num_classes = _check_pair(train_x, train_y, test_x, test_y,
                                                              num_classes)
  predictions = nearest_centre_predict(train_x, train_y, test_x, num_classes=num_classes)
  return float(np.mean(predictions == test_y))


# ---------------------------------------------------------------------------------------------
# Everything at once


def evaluate_all(model: nn.Module, variables: Any, dataset, *, knn_k: int = 200,
                 batch_size: int = 512) -> dict:
  """Features of `dataset.train` and `dataset.test`, then linear probe, kNN and nearest centre.

  `dataset` has `train` and `test` splits (see `extract_features`) and optionally
  `num_classes`. Returns a flat dict of floats: `linear_accuracy`, `linear_l2`,
  `linear_val_accuracy`, `knn_accuracy`, `nearest_centre_accuracy`.
  """
  train_x, train_y = extract_features(model, variables, dataset.train, batch_size=batch_size)
  test_x, test_y = extract_features(model, variables, dataset.test, batch_size=batch_size)
  num_classes = getattr(dataset, "num_classes", None)
  probe = linear_probe(train_x, train_y, test_x, test_y, num_classes=num_classes)
  return {
      "linear_accuracy": probe["accuracy"],
      "linear_l2": probe["l2"],
      "linear_val_accuracy": probe["val_accuracy"],
      "knn_accuracy": knn(train_x, train_y, test_x, test_y, k=knn_k, num_classes=num_classes),
      "nearest_centre_accuracy": nearest_centre(train_x, train_y, test_x, test_y,
                                                num_classes=num_classes),
  }
