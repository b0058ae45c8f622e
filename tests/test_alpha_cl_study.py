"""α-CL studies (Tian 2022): contrastive covariance against a float64 oracle, the energy identity
E_α(W) = ½ tr(W C_α Wᵀ), the α-CL objective presets, and experiments/alpha_cl.py at a
tiny size."""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrax import objectives, theory, train

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import alpha_cl as study  # noqa: E402


def _oracle_cov(x1, x2, alpha):
  """C_α = Σ_i Σ_{j≠i,i+} α_ij [(x_i − x_j)(x_i − x_j)ᵀ − (x_i − x_i+)(x_i − x_i+)ᵀ] with explicit
  loops, float64."""
  x = np.concatenate([x1, x2]).astype(np.float64)
  n, b = x.shape[0], x1.shape[0]
  cov = np.zeros((x.shape[1], x.shape[1]))
  for i in range(n):
    p = (i + b) % n
    total = 0.0
    for j in range(n):
      if j in (i, p):
        continue
      d = x[i] - x[j]
      cov += alpha[i, j] * np.outer(d, d)
      total += alpha[i, j]
    d = x[i] - x[p]
    cov -= total * np.outer(d, d)
  return cov


def _oracle_energy(z1, z2, alpha):
  z = np.concatenate([z1, z2]).astype(np.float64)
  n, b = z.shape[0], z1.shape[0]
  e = 0.0
  for i in range(n):
    p = (i + b) % n
    d2_pos = 0.5 * np.sum((z[i] - z[p]) ** 2)
    for j in range(n):
      if j not in (i, p):
        e += alpha[i, j] * (0.5 * np.sum((z[i] - z[j]) ** 2) - d2_pos)
  return e


def _data(seed, b=5, d=4):
  rng = np.random.default_rng(seed)
  x1 = rng.normal(size=(b, d))
  x2 = x1 + 0.7 * rng.normal(size=(b, d))
  alpha = rng.random((2 * b, 2 * b))  # self/positive entries non-zero: must be ignored
  return x1, x2, alpha


@pytest.mark.parametrize("seed", [0, 1])
def test_contrastive_covariance_matches_oracle(seed):
  x1, x2, alpha = _data(seed)
  got = np.asarray(theory.contrastive_covariance(
      jnp.asarray(x1, jnp.float32), jnp.asarray(x2, jnp.float32), jnp.asarray(alpha, jnp.float32)))
  want = _oracle_cov(x1, x2, alpha)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_covariance_can_be_indefinite():
  # views far apart in one coordinate: the positive term dominates there
  rng = np.random.default_rng(3)
  x1 = rng.normal(size=(6, 3))
  x2 = x1.copy()
  x2[:, 2] += 5.0 * rng.normal(size=6)
  alpha = np.full((12, 12), 0.1)
  eig = np.linalg.eigvalsh(_oracle_cov(x1, x2, alpha))
  got = np.linalg.eigvalsh(np.asarray(theory.contrastive_covariance(x1, x2, alpha), np.float64))
  assert eig[0] < 0 < eig[-1]
  np.testing.assert_allclose(got, eig, rtol=1e-4, atol=1e-4 * np.abs(eig).max())


@pytest.mark.parametrize("seed", [0, 1])
def test_energy_is_half_trace(seed):
  x1, x2, alpha = _data(seed)
  w = np.random.default_rng(seed + 10).normal(size=(3, x1.shape[1]))
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  got = float(theory.alpha_energy(f32(x1 @ w.T), f32(x2 @ w.T), f32(alpha)))
  direct = _oracle_energy(x1 @ w.T, x2 @ w.T, alpha)
  half_trace = 0.5 * np.trace(w @ _oracle_cov(x1, x2, alpha) @ w.T)
  np.testing.assert_allclose(direct, half_trace, rtol=1e-10)  # the identity, in float64
  np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-4)


def test_energy_of_normalised_deep_linear_is_at_most_half_lambda_max():
  x1, x2, alpha = _data(4, b=6, d=5)
  lam = np.linalg.eigvalsh(_oracle_cov(x1, x2, alpha))[-1]
  rng = np.random.default_rng(0)
  for _ in range(20):
    ws = [rng.normal(size=(5, 5)) for _ in range(3)]
    ws = [w / np.linalg.norm(w) for w in ws]
    w = ws[2] @ ws[1] @ ws[0]
    assert _oracle_energy(x1 @ w.T, x2 @ w.T, alpha) <= 0.5 * lam * (1 + 1e-12)


def test_covariance_bad_inputs_raise():
  x = np.zeros((4, 3), np.float32)
  with pytest.raises(ValueError, match="alpha"):
    theory.contrastive_covariance(x, x, np.zeros((4, 4)))
  with pytest.raises(ValueError, match="x1"):
    theory.contrastive_covariance(x[:1], x[:1], np.zeros((2, 2)))


def test_effective_rank_closed_form():
  assert study.effective_rank(np.diag([2.0, 0.0, 0.0])) == pytest.approx(1.0)
  assert study.effective_rank(np.diag([1.0, 1.0, 1.0])) == pytest.approx(3.0)
  assert study.covered_directions(np.array([[1.0, 0.01], [0.0, -2.0], [1.0, 1.0]])) == 2


# ----------------------------------------------------------------------------- objectives


def _views(seed=0, b=6, d=5):
  k1, k2 = jax.random.split(jax.random.key(seed))
  z1 = jax.random.normal(k1, (b, d))
  return z1, z1 + 0.3 * jax.random.normal(k2, (b, d))


@pytest.mark.parametrize("name", ["alpha_direct", "alpha_entropy"])
def test_direct_p2_and_entropy_have_t_times_decoupled_infonce_gradient(name):
  c = train.default_config()
  c.loss.temperature = 0.7
  c.weighting.alpha_direct.p, c.weighting.alpha_direct.eps_alpha = 2.0, 0.0
  loss = objectives.make(objectives.apply_preset(c, name))
  reference = objectives.make(objectives.apply_preset(c, "decoupled"))
  z1, z2 = _views()
  g = jax.grad(lambda a, b: loss(a, b), argnums=(0, 1))(z1, z2)
  g_ref = jax.grad(lambda a, b: reference(a, b), argnums=(0, 1))(z1, z2)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(np.asarray(a), 0.7 * np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["alpha_direct", "alpha_inverse_power", "alpha_sparsemax",
                                  "alpha_entropy"])
def test_alpha_losses_finite_and_checked(name):
  c = objectives.apply_preset(train.default_config(), name)
  z1, z2 = _views(1)
  value, grads = jax.value_and_grad(objectives.make(c))(z1, z2)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grads)))
  c.loss.temperature = -1.0
  with pytest.raises(ValueError, match="temperature"):
    objectives.make(c)


def test_alpha_direct_bad_p_raises():
  c = objectives.apply_preset(train.default_config(), "alpha_direct")
  c.weighting.alpha_direct.p = 0.0
  with pytest.raises(ValueError, match="weighting.alpha_direct: p"):
    objectives.make(c)


# ----------------------------------------------------------------------------- the study, tiny


def test_linear_max_player_is_pca_tiny():
  cfg = study.get_config().linear
  cfg.seeds, cfg.depths, cfg.batch, cfg.input_dim, cfg.hidden_dim, cfg.out_dim = 2, (2, 4), 6, 5, 5, 3
  cfg.strong_noise_dims = 2
  cfg.steps = 1500
  res = study.run_linear(cfg, progress=False)
  assert len(res["runs"]) == 3 * 2 * 2
  for r in res["runs"]:
    assert r["relative_gap"] < 1e-4, r
    assert max(r["sv_ratios"]) < 1e-3, r
    assert r["cos_top"] > 0.999, r
  assert res["claims"]["holds"]


def test_relu_first_layer_has_higher_rank_tiny():
  cfg = study.get_config().relu
  cfg.seeds, cfg.tops, cfg.steps = 1, ("identity",), 2000
  cfg.batch, cfg.input_dim, cfg.hidden_dim = 48, 6, 16
  res = study.run_relu(cfg, progress=False)
  claims = res["claims"]["identity"]
  assert claims["linear_max_effective_rank"] < 1.1
  assert claims["relu_min_effective_rank"] > 1.5


def test_losses_part_end_to_end_tiny(tmp_path):
  cfg = study.get_config().losses
  cfg.variants, cfg.seeds, cfg.steps, cfg.batch_size = ("infonce", "direct_p4"), (0,), 2, 32
  res = study.run_losses(cfg, str(tmp_path), progress=False)
  assert set(res["table"]) == {"infonce", "direct_p4"}
  for row in res["table"].values():
    assert 0.0 <= row["knn_accuracy"][0] <= 1.0 and 0.0 <= row["linear_accuracy"][0] <= 1.0
  assert os.path.exists(tmp_path / "losses" / "runs" / "direct_p4_seed0" / "summary.json")
  cfg.variants = ("nope",)
  with pytest.raises(ValueError, match="losses.variants"):
    study.cells(cfg)
