"""Tests of contrax.evaluate against scikit-learn and float64 NumPy oracles."""
from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
from sklearn.preprocessing import StandardScaler

from contrax import data, evaluate, models

NUM_CLASSES = 4
DIM = 12


def _blobs(seed: int, n: int, spread: float = 0.5):
  """Gaussian classes around random centres: overlapping enough that accuracy is < 100%."""
  centres = np.random.default_rng(1234).normal(size=(NUM_CLASSES, DIM)) * spread
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % NUM_CLASSES
  rng.shuffle(labels)
  return (centres[labels] + rng.normal(size=(n, DIM))).astype(np.float32), labels.astype(np.int32)


TRAIN = _blobs(0, 240)
TEST = _blobs(1, 101)


class ArrayStandIn:
  """Minimal split: `len()` and `split[indices] -> (uint8 images, int32 labels)`."""

  def __init__(self, images, labels):
    self.images, self.labels = images, labels
    self.requests = []

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, indices):
    self.requests.append(np.asarray(indices))
    return self.images[indices], self.labels[indices]


# ---------------------------------------------------------------------------------------------
# Linear probe


def _sklearn_probe(fit_x, fit_y, eval_x, l2):
  """Same protocol in scikit-learn: StandardScaler on the fitting data, C = 1 / (n l2)."""
  scaler = StandardScaler().fit(fit_x.astype(np.float64))
  clf = LogisticRegression(C=1.0 / (len(fit_y) * l2), tol=1e-10, max_iter=10_000)
  clf.fit(scaler.transform(fit_x.astype(np.float64)), fit_y)
  return clf, scaler.transform(eval_x.astype(np.float64))


def test_logistic_fit_matches_sklearn_weights_and_objective():
  l2 = 1e-2
  (x,) = evaluate._standardise(TRAIN[0])
  w, b = evaluate._fit_logistic(jnp.asarray(x), jnp.asarray(TRAIN[1]), l2,
                                num_classes=NUM_CLASSES, steps=500)
  clf, _ = _sklearn_probe(TRAIN[0], TRAIN[1], TRAIN[0], l2)
  np.testing.assert_allclose(w, clf.coef_.T, atol=2e-3)
  np.testing.assert_allclose(b, clf.intercept_, atol=2e-3)

  def objective(w, b):  # float64, written out: mean CE + l2/2 ||W||²
    logits = x.astype(np.float64) @ w + b
    logits -= logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -log_p[np.arange(len(x)), TRAIN[1]].mean() + 0.5 * l2 * np.sum(w**2)

  ours = objective(np.asarray(w, np.float64), np.asarray(b, np.float64))
  np.testing.assert_allclose(ours, objective(clf.coef_.T, clf.intercept_), rtol=1e-5)


def test_linear_probe_single_l2_matches_sklearn_on_test():
  l2 = 1e-2
  result = evaluate.linear_probe(*TRAIN, *TEST, l2_grid=(l2,))
  clf, test_x = _sklearn_probe(TRAIN[0], TRAIN[1], TEST[0], l2)
  sklearn_accuracy = float(np.mean(clf.predict(test_x) == TEST[1]))
  assert result["l2"] == l2
  assert abs(result["accuracy"] - sklearn_accuracy) <= 0.01
  assert 0.5 < result["accuracy"] < 1.0  # the task is neither trivial nor hopeless


def test_linear_probe_validation_split_needs_two_rows_per_class():
  # The validation split is contrax.data.stratified_split (scikit-learn's, tested in
  # test_data.py); a class with one training row cannot be stratified: a clear error.
  train_x = np.random.default_rng(0).normal(size=(21, 3))
  train_y = np.repeat(np.arange(3), [10, 10, 1])
  with pytest.raises(ValueError, match="cannot split train_y"):
    evaluate.linear_probe(train_x, train_y, train_x, train_y)


def test_linear_probe_chooses_l2_like_sklearn_on_the_validation_split():
  grid = (1e-4, 1e-2, 1.0)
  result = evaluate.linear_probe(*TRAIN, *TEST, l2_grid=grid, val_fraction=0.25, seed=7)
  fit, val = data.stratified_split(TRAIN[1], test_fraction=0.25, seed=7)
  expected = {}
  for l2 in grid:
    clf, val_x = _sklearn_probe(TRAIN[0][fit], TRAIN[1][fit], TRAIN[0][val], l2)
    expected[l2] = float(np.mean(clf.predict(val_x) == TRAIN[1][val]))
  for l2 in grid:
    assert abs(result["val_accuracies"][l2] - expected[l2]) <= 1.5 / val.size
  best = max(expected.values())
  assert result["l2"] == max(l2 for l2, acc in expected.items() if acc == best)
  assert result["val_accuracy"] == result["val_accuracies"][result["l2"]]


def test_linear_probe_never_looks_at_test_labels_or_features_when_choosing():
  grid = (1e-4, 1e-2, 1.0)
  clean = evaluate.linear_probe(*TRAIN, *TEST, l2_grid=grid, val_fraction=0.25, seed=7)
  rng = np.random.default_rng(9)
  poisoned_y = rng.integers(0, NUM_CLASSES, TEST[1].size).astype(np.int32)
  poisoned_x = (rng.normal(size=TEST[0].shape) * 100).astype(np.float32)
  poisoned = evaluate.linear_probe(*TRAIN, poisoned_x, poisoned_y, l2_grid=grid,
                                   val_fraction=0.25, seed=7)
  for key in ("l2", "val_accuracy", "val_accuracies", "train_accuracy"):
    assert poisoned[key] == clean[key]
  assert poisoned["accuracy"] != clean["accuracy"]


# ---------------------------------------------------------------------------------------------
# kNN


def _knn_numpy(train_x, train_y, test_x, k, temperature, num_classes):
  """Wu et al. 2018 in float64: cosine top-k, weights exp(s / t), vote by class."""
  unit = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)
  sims = unit(test_x.astype(np.float64)) @ unit(train_x.astype(np.float64)).T
  k = min(k, len(train_y))
  top = np.argsort(-sims, axis=1)[:, :k]
  votes = np.zeros((len(test_x), num_classes))
  for i in range(len(test_x)):
    np.add.at(votes[i], train_y[top[i]], np.exp(sims[i, top[i]] / temperature))
  return votes.argmax(1)


@pytest.mark.parametrize("k, temperature", [(1, 0.1), (15, 0.1), (200, 0.07), (10_000, 0.5)])
@pytest.mark.filterwarnings("ignore:k=10000 exceeds the memory bank")
def test_knn_matches_numpy_oracle(k, temperature):
  predictions = evaluate.knn_predict(*TRAIN, TEST[0], k=k, temperature=temperature,
                                     batch_size=32)
  expected = _knn_numpy(*TRAIN, TEST[0], k, temperature, NUM_CLASSES)
  np.testing.assert_array_equal(predictions, expected)
  accuracy = evaluate.knn(*TRAIN, *TEST, k=k, temperature=temperature, batch_size=32)
  assert accuracy == pytest.approx(np.mean(expected == TEST[1]))


def test_knn_matches_sklearn_cosine_with_exponential_weights():
  sklearn_knn = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute",
                                     weights=lambda d: np.exp((1.0 - d) / 0.1))
  sklearn_knn.fit(*TRAIN)
  np.testing.assert_array_equal(evaluate.knn_predict(*TRAIN, TEST[0], k=20, temperature=0.1),
                                sklearn_knn.predict(TEST[0]))


def test_knn_warns_when_k_exceeds_the_memory_bank():
  n = len(TRAIN[1])
  with pytest.warns(UserWarning, match=f"k={n + 1} exceeds the memory bank of {n} training rows"):
    predictions = evaluate.knn_predict(*TRAIN, TEST[0], k=n + 1, temperature=0.5)
  np.testing.assert_array_equal(predictions, _knn_numpy(*TRAIN, TEST[0], n, 0.5, NUM_CLASSES))
  with pytest.warns(UserWarning, match="exceeds the memory bank"):
    evaluate.knn(*TRAIN, *TEST, k=n + 1)


def test_knn_small_temperature_does_not_underflow():
  """At t = 0.005 exp(s/t) spans > 1e100; the vote must still follow the nearest neighbours."""
  predictions = evaluate.knn_predict(*TRAIN, TEST[0], k=50, temperature=0.005)
  np.testing.assert_array_equal(predictions, _knn_numpy(*TRAIN, TEST[0], 1, 1.0, NUM_CLASSES))


# ---------------------------------------------------------------------------------------------
# Nearest centre


def test_nearest_centre_matches_sklearn():
  predictions = evaluate.nearest_centre_predict(*TRAIN, TEST[0])
  np.testing.assert_array_equal(predictions, NearestCentroid().fit(*TRAIN).predict(TEST[0]))
  accuracy = evaluate.nearest_centre(*TRAIN, *TEST)
  assert accuracy == pytest.approx(np.mean(predictions == TEST[1]))


def test_nearest_centre_never_predicts_an_absent_class():
  train_x, train_y = TRAIN
  keep = train_y != 2
  predictions = evaluate.nearest_centre_predict(train_x[keep], train_y[keep], TEST[0],
                                                num_classes=NUM_CLASSES)
  assert 2 not in predictions
  sklearn_labels = NearestCentroid().fit(train_x[keep], train_y[keep]).predict(TEST[0])
  np.testing.assert_array_equal(predictions, sklearn_labels)


# ---------------------------------------------------------------------------------------------
# Features and the whole protocol


def _mlp_numpy(params, images_uint8):
  x = (images_uint8.reshape(len(images_uint8), -1).astype(np.float64) / 255.0 - 0.5) / 0.25
  for layer in sorted(params["encoder"]):
    x = np.maximum(x @ np.asarray(params["encoder"][layer]["kernel"], np.float64)
                   + np.asarray(params["encoder"][layer]["bias"], np.float64), 0.0)
  return x


@pytest.fixture(scope="module")
def mlp_and_images():
  model = models.create("mlp", hidden_sizes=(32, 16), projection_dim=8)
  variables = models.init_variables(model, jax.random.key(0), (6, 6, 1))
  rng = np.random.default_rng(5)
  labels = np.arange(90, dtype=np.int32) % 3
  # Class c: dark noisy images with rows 2c and 2c + 1 bright (a different direction per class).
  images = rng.normal(40, 12, (90, 6, 6, 1))
  for c in range(3):
    images[labels == c, 2 * c:2 * c + 2] += 160
  images = np.clip(images, 0, 255).astype(np.uint8)
  return model, variables, images, labels


def test_extract_features_matches_numpy_mlp_with_padding(mlp_and_images):
  model, variables, images, labels = mlp_and_images
  split = ArrayStandIn(images[:37], labels[:37])
  features, out_labels = evaluate.extract_features(model, variables, split, batch_size=16)
  assert features.shape == (37, 16) and features.dtype == np.float32
  np.testing.assert_array_equal(out_labels, labels[:37])
  np.testing.assert_allclose(features, _mlp_numpy(variables["params"], images[:37]),
                             rtol=1e-4, atol=1e-5)
  assert [len(r) for r in split.requests] == [16, 16, 5]


TRACES = []


class _TraceCountingModel(models.ContrastiveModel):
  def encode(self, x, train: bool = False):
    TRACES.append(x.shape)   # runs only while JAX traces
    return super().encode(x, train=train)


def test_extract_features_traces_once_across_calls(mlp_and_images):
  # Evaluating during training calls extract_features with new variables each time: the
  # apply must be compiled once per (model, batch shape), not once per call.
  model, variables, images, labels = mlp_and_images
  counting = _TraceCountingModel(**{f: getattr(model, f) for f in ("encoder", "head")})
  split = ArrayStandIn(images[:32], labels[:32])
  first, _ = evaluate.extract_features(counting, variables, split, batch_size=16)
  shifted = jax.tree.map(lambda v: v * 1.5, variables)
  second, _ = evaluate.extract_features(counting, shifted, split, batch_size=16)
  assert TRACES == [(16, 6, 6, 1)]
  assert not np.allclose(first, second)


def test_extract_features_rejects_non_image_dtypes(mlp_and_images):
  model, variables, images, labels = mlp_and_images
  with pytest.raises(TypeError, match="uint8"):
    evaluate.extract_features(model, variables, ArrayStandIn(images.astype(np.int32), labels))


def test_evaluate_all_on_separable_images(mlp_and_images):
  model, variables, images, labels = mlp_and_images
  dataset = types.SimpleNamespace(train=ArrayStandIn(images[:60], labels[:60]),
                                  test=ArrayStandIn(images[60:], labels[60:]), num_classes=3)
  metrics = evaluate.evaluate_all(model, variables, dataset, knn_k=10)
  assert set(metrics) == {"linear_accuracy", "linear_l2", "linear_val_accuracy", "knn_accuracy",
                          "nearest_centre_accuracy"}
  for key in ("linear_accuracy", "knn_accuracy", "nearest_centre_accuracy"):
    assert metrics[key] >= 0.9, (key, metrics)


# ---------------------------------------------------------------------------------------------
# Argument checks


def test_bad_arguments():
  with pytest.raises(ValueError, match="k must be"):
    evaluate.knn(*TRAIN, *TEST, k=0)
  with pytest.raises(ValueError, match="temperature"):
    evaluate.knn(*TRAIN, *TEST, temperature=-1.0)
  with pytest.raises(ValueError, match=r"test_y must lie in \[0, 4\)"):
    evaluate.nearest_centre(*TRAIN, TEST[0], TEST[1] + 4)
  with pytest.raises(ValueError, match="same non-zero number of rows"):
    evaluate.linear_probe(TRAIN[0][:-1], TRAIN[1], *TEST)
  with pytest.raises(ValueError, match="val_fraction"):
    evaluate.linear_probe(*TRAIN, *TEST, val_fraction=1.0)
  with pytest.raises(ValueError, match="l2_grid"):
    evaluate.linear_probe(*TRAIN, *TEST, l2_grid=(1e-3, 0.0))
  with pytest.raises(TypeError, match="integer class labels"):
    evaluate.knn(*TRAIN, TEST[0], TEST[1].astype(np.float32))
  with pytest.raises(ValueError, match="feature dimension"):
    evaluate.knn(*TRAIN, TEST[0][:, :3], TEST[1])
