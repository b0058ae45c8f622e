"""Generalisation diagnostics (Huang, Yi & Zhao 2023): centres, nearest-centre classifier,
Theorem-1 threshold, alignment, R_ε, augmented distance and σ̂(δ). The paper-form
InfoNCE = L1 + L2, L_CC = (1 − λ)L1 + λL2 and L_align ≤ 2√(d·L1) are tested in
tests/test_barlow.py."""
import itertools
import math

import jax
import numpy as np
import pytest
from sklearn.neighbors import NearestCentroid

from contrax import augment, theory
from contrax.losses import barlow


def view_feats(seed=0, s=3, n=30, d=5, k=3):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, size=n)
  base = rng.normal(size=(k, d))[labels]
  feats = base[None] + 0.4 * rng.normal(size=(s, n, d))
  return feats / np.linalg.norm(feats, axis=-1, keepdims=True), labels


def test_centres_average_samples_and_views():
  feats, labels = view_feats()
  centres, p = theory.augmented_class_centres(feats, labels, 3)
  for k in range(3):
    members = [feats[s, i] for s in range(feats.shape[0]) for i in np.flatnonzero(labels == k)]
    np.testing.assert_allclose(centres[k], np.mean(members, axis=0), rtol=1e-12)
    assert p[k] == pytest.approx(np.mean(labels == k))


def test_nearest_centre_is_the_linear_classifier():
  feats, labels = view_feats(1, s=1, n=60)
  centres, _ = theory.augmented_class_centres(feats, labels, 3)
  rng = np.random.default_rng(2)
  queries = rng.normal(size=(200, 5))
  ours = theory.nearest_centre_classify(queries, centres)
  # Oracle 1: argmin of Euclidean distances. Oracle 2: sklearn's NearestCentroid (S = 1).
  brute = np.argmin(np.linalg.norm(queries[:, None] - centres[None], axis=-1), axis=1)
  np.testing.assert_array_equal(ours, brute)
  skl = NearestCentroid().fit(feats[0], labels).predict(queries)
  np.testing.assert_array_equal(ours, skl)
  # Linear classifier with rows μ_k and bias −½‖μ_k‖² (its logits' argmax).
  w, b = centres, -0.5 * np.sum(centres**2, axis=1)
  np.testing.assert_array_equal(ours, np.argmax(queries @ w.T + b, axis=1))
  err = theory.nearest_centre_error(queries, brute, centres)
  assert err == 0.0
  assert theory.nearest_centre_error(queries, (brute + 1) % 3, centres) == 1.0


def test_gram_and_deficit():
  c = np.array([[0.6, 0.0], [0.0, 0.8], [0.3, 0.4]])
  np.testing.assert_allclose(theory.centre_gram(c), c @ c.T)
  assert theory.max_cross_centre(c) == pytest.approx(0.32)
  assert theory.centre_deficit(c) == pytest.approx(1 - 0.25)
  assert theory.centre_deficit(c, r=2.0) == pytest.approx(1 - 0.25 / 4)


def test_theorem1_threshold_by_hand():
  sigma, delta, eps, lip, r, r_eps, pmin, dmu = 0.95, 0.2, 0.1, 2.0, 1.5, 0.01, 0.1, 0.05
  rho = 2 * 0.05 + 0.01 / 0.1 + 0.95 * (2.0 * 0.2 / 1.5 + 2 * 0.1 / 1.5)
  assert theory.rho_max(sigma, delta, eps, lip, r, r_eps, pmin) == pytest.approx(rho)
  want = 1.5**2 * (1 - rho - math.sqrt(2 * rho) - 0.05 / 2)
  assert theory.divergence_threshold(sigma, delta, eps, lip, r, r_eps, pmin, dmu) == \
      pytest.approx(want)
  # Perfect concentration and alignment: threshold r²(1 − Δ_μ/2).
  assert theory.divergence_threshold(1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5, 0.2) == pytest.approx(0.9)
  with pytest.raises(ValueError, match="sigma"):
    theory.rho_max(1.5, delta, eps, lip, r, r_eps, pmin)


def test_alignment_and_r_eps_against_brute_force():
  feats, _ = view_feats(3, s=4, n=20)
  pairs = [(a, b) for a, b in itertools.permutations(range(4), 2)]
  want = np.mean([np.sum((feats[a] - feats[b]) ** 2, axis=1) for a, b in pairs])
  assert theory.alignment_from_views(feats) == pytest.approx(want, rel=1e-10)
  # S = 2: the peer implementation in contrax.losses.barlow.
  assert theory.alignment_from_views(feats[:2]) == pytest.approx(
      float(barlow.alignment(feats[0], feats[1])), rel=1e-5)
  spread = np.array([max(np.linalg.norm(feats[a, i] - feats[b, i]) for a, b in pairs)
                     for i in range(20)])
  for eps in (0.1, np.median(spread), 2.0):
    assert theory.r_epsilon(feats, eps) == pytest.approx(np.mean(spread > eps))
  with pytest.raises(ValueError, match="S >= 2"):
    theory.alignment_from_views(feats[:1])


def test_augmented_distance_of_an_image_with_itself_is_zero():
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
  views = theory.sample_views("crop+flip", jax.random.PRNGKey(0), images, 4)
  assert views.shape == (4, 3, 8, 8, 1)
  np.testing.assert_array_equal(views[0], np.asarray(augment.to_float(images)))
  assert theory.augmented_distance(views[:, 1], views[:, 1]) == 0.0
  d = theory.augmented_distance_matrix(views)
  np.testing.assert_array_equal(np.diag(d), 0.0)
  np.testing.assert_allclose(d, d.T)
  # Oracle: brute-force min over the S × S view pairs.
  flat = views.reshape(4, 3, -1).astype(np.float64)
  for i, j in [(0, 1), (1, 2), (2, 0)]:
    want = min(np.linalg.norm(flat[a, i] - flat[b, j]) for a in range(4) for b in range(4))
    assert d[i, j] == pytest.approx(want, rel=1e-12)
    assert theory.augmented_distance(views[:, i], views[:, j]) == pytest.approx(want, rel=1e-12)


def test_sigma_hat_on_known_cliques():
  # Class 0 (6 points): a 4-clique {0,1,2,3} near 0 and 2 far points; class 1 (4 points):
  # a 2-clique only (pairs far apart except one). 1-D points, distance |x_i − x_j|.
  x = np.array([0.0, 0.1, 0.2, 0.3, 5.0, 9.0, 20.0, 20.1, 30.0, 40.0])
  labels = np.array([0] * 6 + [1] * 4)
  d = np.abs(x[:, None] - x[None, :])
  sigma, frac = theory.sigma_hat(d, labels, 0.35, 2)
  np.testing.assert_allclose(frac, [4 / 6, 2 / 4])
  assert sigma == pytest.approx(0.6 * 4 / 6 + 0.4 * 2 / 4)
  # δ large: whole classes are cliques; δ = 0: singletons.
  assert theory.sigma_hat(d, labels, 100.0, 2)[0] == pytest.approx(1.0)
  np.testing.assert_allclose(theory.sigma_hat(d, labels, 0.0, 2)[1], [1 / 6, 1 / 4])


def test_greedy_clique_finds_planted_clique():
  rng = np.random.default_rng(5)
  m = 25
  adj = rng.random((m, m)) < 0.2
  adj = adj | adj.T
  planted = rng.choice(m, 8, replace=False)
  adj[np.ix_(planted, planted)] = True
  clique = theory.greedy_clique(adj)
  sub = adj[np.ix_(clique, clique)] | np.eye(len(clique), dtype=bool)
  assert sub.all()  # it is a clique
  assert len(clique) >= 8


def test_barlow_is_a_training_loss():
  from contrax import objectives, train
  c = objectives.apply_preset(train.default_config(), "barlow")
  c.loss.lambda_ = 0.3
  rng = np.random.default_rng(6)
  z1, z2 = (rng.normal(size=(16, 4)).astype(np.float32) for _ in range(2))
  assert float(objectives.make(c)(z1, z2)) == pytest.approx(
      float(barlow.barlow_twins(z1, z2, lambda_=0.3)), rel=1e-6)


@pytest.mark.slow  # one train.pretrain + evaluate_all: tens of seconds (minutes on a loaded CPU)
def test_experiment_runs_end_to_end(tmp_path):
  import importlib.util
  import json
  import os
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.join(root, "experiments"))  # its `import _study`
  spec = importlib.util.spec_from_file_location(
      "generalization", os.path.join(root, "experiments", "generalization.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update(dict(steps=2, batch_size=16, warmup_steps=1, log_every=1, diag_images=30,
                     num_views=2, methods=("barlow",), augmentations=("crop",),
                     strength_methods=(), seeds=(0,)))
  summary = module.run(config, str(tmp_path))
  assert summary["runs"] == 1
  for name in ("config.json", "results.json", "results.md", "summary.json",
               "accuracy_vs_augmentation.png", "error_vs_bound.png"):
    assert (tmp_path / name).exists(), name
  (record,) = json.loads((tmp_path / "results.json").read_text())
  assert 0.0 <= record["nc_error"] <= 1.0 and 0.0 <= record["r_eps"] <= 1.0
  # (1 − σ̂) + R̂_ε at the larger δ.
  assert record["bound"] == pytest.approx(record["one_minus_sigma@3"] + record["r_eps"])
  assert record["bound_holds"] == (record["nc_error"] <= record["bound"])
