"""CURL theory (Arora et al. 2019, Merad et al. 2020): collision probability, samplers,
mean-classifier loss and the bound."""
import math

import numpy as np
import pytest

from contrax import theory

PROBS = np.array([0.4, 0.25, 0.15, 0.12, 0.08])


def points(seed=0, classes=5, per_class=12, dim=6, spread=0.8):
  return theory.latent_class_points(np.random.default_rng(seed), classes, per_class, dim,
                                    spread=spread)


def log2_loss(v):
  """float64 oracle: log_2(1 + Σ_i exp(−v_i)) row-wise."""
  return np.log1p(np.sum(np.exp(-v), axis=-1)) / math.log(2.0)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_collision_probability_matches_monte_carlo(k):
  rng = np.random.default_rng(k)
  n = 200_000
  c_pos = rng.choice(PROBS.size, size=n, p=PROBS)
  c_neg = rng.choice(PROBS.size, size=(n, k), p=PROBS)
  freq = np.mean(np.any(c_neg == c_pos[:, None], axis=1))
  tau = theory.collision_probability(PROBS, k)
  assert abs(freq - tau) < 4 * math.sqrt(tau * (1 - tau) / n)
  assert math.isclose(theory.collision_probability(np.full(4, 0.25), 1), 0.25)


def test_sample_tuples_respects_classes_and_collision_rate():
  x, labels = points(per_class=8)
  k = 4
  tuples = theory.sample_tuples(np.random.default_rng(1), labels, 4000, k, class_probs=PROBS)
  a, p, neg = tuples
  assert neg.shape == (4000, k)
  assert np.all(labels[a] == labels[p]) and np.all(a != p)
  assert np.all(neg != a[:, None]) and np.all(neg != p[:, None])
  freq = np.mean(np.any(labels[neg] == labels[a][:, None], axis=1))
  tau = theory.collision_probability(PROBS, k)
  assert abs(freq - tau) < 4 * math.sqrt(tau * (1 - tau) / 4000)
  free = theory.sample_tuples(np.random.default_rng(2), labels, 500, k, collision_free=True)
  assert not np.any(labels[free.negatives] == labels[free.anchor][:, None])


def test_latent_class_points_lie_on_the_sphere_with_fixed_last_coordinate():
  x, labels = theory.latent_class_points(np.random.default_rng(0), 3, 4, 5, spread=0.3,
                                         last_coordinate=0.6)
  assert x.shape == (12, 5) and np.array_equal(labels, np.repeat(np.arange(3), 4))
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(x[:, -1], 0.6, rtol=1e-6)
  digits = theory.to_sphere(np.arange(1, 13, dtype=float).reshape(4, 3), last_coordinate=0.0)
  np.testing.assert_allclose(np.linalg.norm(digits, axis=1), 1.0, rtol=1e-6)


def test_bound_tuples_strata_couplings_and_class_law():
  _, labels = points(per_class=10)
  k, t = 3, 20_000
  bt = theory.sample_bound_tuples(np.random.default_rng(3), labels, t, k, class_probs=PROBS,
                                  pool_size=6)
  collides = np.any(bt.negative_classes == bt.positive_class[:, None], axis=1)
  assert np.array_equal(collides, bt.collision) and bt.collision.sum() == t
  assert bt.pools.shape == (5, 6) and np.all(labels[bt.pools] == np.arange(5)[:, None])
  # Every coordinate of the s joint draws runs through its class pool exactly once.
  rows = np.arange(0, 2 * t, 997)
  for r in rows:
    assert sorted(bt.positives[r]) == sorted(bt.pools[bt.positive_class[r]])
    for i in range(k):
      assert sorted(bt.negatives[r, :, i]) == sorted(bt.pools[bt.negative_classes[r, i]])
    assert bt.anchor[r] in bt.pools[bt.positive_class[r]]
  # Mixing the strata with weights 1 − τ_k and τ_k recovers the i.i.d. law: (c⁺, c⁻_1) ~ ρ ⊗ ρ.
  tau = theory.collision_probability(PROBS, k)
  weights = np.where(bt.collision, tau / t, (1 - tau) / t)
  joint = np.zeros((5, 5))
  np.add.at(joint, (bt.positive_class, bt.negative_classes[:, 0]), weights)
  np.testing.assert_allclose(joint, np.outer(PROBS, PROBS), atol=0.012)
  last = np.zeros(5)
  np.add.at(last, bt.negative_classes[:, -1], weights)
  np.testing.assert_allclose(last, PROBS, atol=0.012)


def test_mean_classifier_loss_matches_numpy_oracle_over_collision_free_tuples():
  rng = np.random.default_rng(4)
  m, k, c, d = 40, 3, 4, 5
  feats = rng.normal(size=(m, d)).astype(np.float32)
  centres = rng.normal(size=(c, d)).astype(np.float32)
  pos = rng.integers(c, size=m)
  neg = rng.integers(c, size=(m, k))
  loss, acc = theory.mean_classifier_loss(feats, pos, neg, centres)
  v = np.einsum("md,mkd->mk", feats.astype(np.float64),
                centres[pos][:, None, :].astype(np.float64) - centres[neg])
  free = ~np.any(neg == pos[:, None], axis=1)
  assert 0 < free.sum() < m
  np.testing.assert_allclose(float(loss), np.mean(log2_loss(v)[free]), rtol=1e-5)
  np.testing.assert_allclose(float(acc), np.mean(np.all(v > 0, axis=1)[free]), rtol=1e-6)
  hinge, _ = theory.mean_classifier_loss(feats, pos, neg, centres, loss="hinge")
  np.testing.assert_allclose(float(hinge), np.mean(np.maximum(0, 1 - v.min(1))[free]), rtol=1e-5)


def test_curl_bound_matches_numpy_oracle():
  x, labels = points(per_class=9)
  k = 2
  bt = theory.sample_bound_tuples(np.random.default_rng(5), labels, 30, k, class_probs=PROBS)
  w = np.random.default_rng(6).normal(size=(x.shape[1], 4))
  f = np.tanh(x.astype(np.float64) @ w)
  out = theory.curl_bound(f.astype(np.float32), bt, chunk_size=7)
  mu = f[bt.pools].mean(axis=1)
  fa = f[bt.anchor]
  v_un = np.einsum("td,tsd->ts", fa, f[bt.positives])[..., None] - np.einsum(
      "td,tskd->tsk", fa, f[bt.negatives])
  per_row = log2_loss(v_un).mean(axis=1)
  tau = 1 - np.sum(PROBS * (1 - PROBS) ** k)
  l_un = (1 - tau) * per_row[~bt.collision].mean() + tau * per_row[bt.collision].mean()
  v_sup = np.einsum("td,tkd->tk", fa, mu[bt.positive_class][:, None, :] - mu[bt.negative_classes])
  lhs = log2_loss(v_sup)[~bt.collision].mean()
  assert math.isclose(out["tau"], tau, rel_tol=1e-12)
  assert math.isclose(out["ell_min"], 1.0)
  np.testing.assert_allclose(out["unsupervised_loss"], l_un, rtol=1e-5)
  np.testing.assert_allclose(out["lhs"], lhs, rtol=1e-5)
  np.testing.assert_allclose(out["rhs"], (l_un - tau) / (1 - tau), rtol=1e-5)
  np.testing.assert_allclose(out["mean_classifier_accuracy"],
                             np.mean(np.all(v_sup > 0, axis=1)[~bt.collision]), rtol=1e-6)


@pytest.mark.parametrize("k,loss,base", [(1, "logistic", 2.0), (4, "logistic", 2.0),
                                         (2, "logistic", math.e), (3, "hinge", 2.0)])
def test_curl_bound_holds_for_random_encoders(k, loss, base):
  x, labels = points(per_class=10)
  rng = np.random.default_rng(10 + k)
  bt = theory.sample_bound_tuples(rng, labels, 40, k, class_probs=PROBS)
  for scale in (0.0, 0.05, 1.0, 4.0):
    w1 = rng.normal(size=(x.shape[1], 16)) * scale
    w2 = rng.normal(size=(16, 3))
    f = (np.maximum(x @ w1, 0) @ w2).astype(np.float32)
    out = theory.curl_bound(f, bt, loss=loss, base=base)
    assert out["lhs"] <= out["rhs"] + 1e-5 * max(1.0, abs(out["rhs"])), (scale, out)
    assert out["holds"]


def test_bad_arguments_are_named():
  _, labels = points(per_class=4)
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="class_probs"):
    theory.collision_probability([0.5, 0.6], 2)
  with pytest.raises(ValueError, match="num_negatives"):
    theory.collision_probability(PROBS, 0)
  with pytest.raises(ValueError, match="pool_size"):
    theory.sample_bound_tuples(rng, labels, 5, 2, pool_size=9)
  with pytest.raises(ValueError, match="at least two classes"):
    theory.sample_bound_tuples(rng, labels, 5, 2, class_probs=[1, 0, 0, 0, 0])
  with pytest.raises(TypeError, match="rng"):
    theory.sample_tuples(0, labels, 5, 2)
  with pytest.raises(ValueError, match="loss"):
    theory.mean_classifier_loss(np.ones((2, 3)), np.zeros(2, int), np.ones((2, 1), int),
                                np.ones((2, 3)), loss="square")
  with pytest.raises(ValueError, match="features"):
    theory.curl_bound(np.ones((3, 2), np.float32),
                      theory.sample_bound_tuples(rng, labels, 5, 2))
