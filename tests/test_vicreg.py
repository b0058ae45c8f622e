"""VICReg (contrax.losses.vicreg) against a float64 NumPy oracle written from the formula of
Bardes, Ponce, LeCun 2022 (the official code's form: variance terms averaged over the views,
covariance terms summed), closed forms of each term, finite-difference gradients, and the
sharded loss on 8 devices against the single-device loss on the global batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from contrax import objectives
from contrax.losses import vicreg_loss, vicreg_terms
from oracles import fd_grad, rel_err

B, D = 8, 4
# Column scales with standard deviations well below and above gamma = 1 (no hinge kink near).
SCALES = np.array([0.3, 0.6, 2.0, 3.0])


def oracle_terms(z1, z2, gamma=1.0, eps=1e-4):
  z1, z2 = (np.asarray(z, np.float64) for z in (z1, z2))
  n, d = z1.shape
  invariance = np.sum((z1 - z2) ** 2) / (n * d)

  def variance(z):
    c = z - z.mean(0)
    std = np.sqrt(np.sum(c ** 2, 0) / (n - 1) + eps)
    return np.mean(np.maximum(0.0, gamma - std))

  def covariance(z):
    c = z - z.mean(0)
    cov = c.T @ c / (n - 1)
    return sum(cov[j, k] ** 2 for j in range(d) for k in range(d) if j != k) / d
  return invariance, (variance(z1) + variance(z2)) / 2, covariance(z1) + covariance(z2)


def oracle_vicreg(z1, z2, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
  s, v, c = oracle_terms(z1, z2, gamma, eps)
  return lam * s + mu * v + nu * c


def views(seed, b=B):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(b, D)) * SCALES
  z2 = z1 + 0.3 * rng.normal(size=(b, D)) + 0.2 * z1 @ rng.normal(size=(D, D))
  return z1.astype(np.float32), z2.astype(np.float32)


@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0, 1.0, 1e-4), (1.0, 3.0, 0.5, 2.0, 1e-2)])
def test_value_and_gradient_match_the_oracle(coeffs):
  lam, mu, nu, gamma, eps = coeffs
  z1, z2 = views(0)
  ours = lambda a, b: vicreg_loss(a, b, sim_coeff=lam, std_coeff=mu, cov_coeff=nu, gamma=gamma,
                                  eps=eps)
  oracle = lambda a, b: oracle_vicreg(a, b, lam, mu, nu, gamma, eps)
  value, grads = jax.value_and_grad(ours, argnums=(0, 1))(z1, z2)
  np.testing.assert_allclose(float(value), oracle(z1, z2), rtol=1e-5)
  assert rel_err(grads, fd_grad(oracle, z1, z2)) < 1e-5
  terms = vicreg_terms(z1, z2, gamma=gamma, eps=eps)
  np.testing.assert_allclose(np.array(terms), oracle_terms(z1, z2, gamma, eps), rtol=1e-5)


def test_identical_views_have_no_invariance_term():
  z1, _ = views(1)
  terms = vicreg_terms(z1, z1)
  assert float(terms.invariance) == 0.0
  assert float(terms.variance) > 0 and float(terms.covariance) > 0


def test_decorrelated_dimensions_with_large_std_have_no_variance_or_covariance_term():
  """Columns of a Hadamard matrix (without its constant column) are centred and orthogonal:
  covariance exactly diagonal, C_jj = B/(B-1) -> std > 1 = gamma, so both terms are 0."""
  h = np.array([[1.0]])
  while h.shape[0] < B:
    h = np.block([[h, h], [h, -h]])
  z = h[:, 1:D + 1].astype(np.float32)
  terms = vicreg_terms(z, 2.0 * z)
  assert float(terms.variance) == 0.0 and float(terms.covariance) == 0.0
  np.testing.assert_allclose(float(terms.invariance), np.mean(z ** 2), rtol=1e-6)
  # Gradient of the variance and covariance terms alone: zero (hinge inactive, C_jk = 0).
  grad = jax.grad(lambda a: vicreg_loss(a, a, sim_coeff=0.0))(jnp.asarray(z))
  np.testing.assert_allclose(grad, 0.0, atol=1e-7)


def test_variance_hinge_closed_form():
  """Dimension j scaled to standard deviation s_j exactly:
  v = mean_j max(0, 1 - sqrt(s_j² + eps))."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(B, D))
  x = (x - x.mean(0)) / x.std(0, ddof=1) * SCALES
  terms = vicreg_terms(x.astype(np.float32), x.astype(np.float32), eps=1e-4)
  expected = np.mean(np.maximum(0.0, 1.0 - np.sqrt(SCALES ** 2 + 1e-4)))
  np.testing.assert_allclose(float(terms.variance), expected, rtol=1e-5)


def test_sharded_on_8_devices_equals_single_device_value_and_gradient():
  """Global-batch statistics: each device's value and its rows' gradients are the global
  loss's (no 1/world_size factor in the gradient)."""
  mesh = jax.make_mesh((8,), ("data",))
  z1, z2 = views(4, b=16)
  sharded = jax.shard_map(lambda a, b: vicreg_loss(a, b, axis_name="data"), mesh=mesh,
                          in_specs=(P("data"), P("data")), out_specs=P())
  put = lambda z: jax.device_put(z, NamedSharding(mesh, P("data")))
  v8, g8 = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(put(z1), put(z2))
  v1, g1 = jax.value_and_grad(vicreg_loss, argnums=(0, 1))(z1, z2)
  np.testing.assert_allclose(float(v8), float(v1), rtol=1e-5)
  np.testing.assert_allclose(float(v1), oracle_vicreg(z1, z2), rtol=1e-5)
  assert rel_err(g8, g1) < 1e-5


def config(**loss):
  c = objectives.default_config()
  c.loss.name = "vicreg"
  for key, value in loss.items():
    c.loss.vicreg[key] = value
  return c


def test_the_loss_choice_vicreg_is_the_paper_loss():
  z1, z2 = views(5)
  np.testing.assert_allclose(float(objectives.make(config())(z1, z2)), oracle_vicreg(z1, z2),
                             rtol=1e-5)
  preset = objectives.apply_preset(objectives.default_config(), "vicreg")
  assert preset.loss.name == "vicreg" and objectives.describe(preset) == "vicreg"


@pytest.mark.parametrize("change,field", [
    ({"gamma": 0.0}, "loss.vicreg.gamma"), ({"eps": 0.0}, "loss.vicreg.eps"),
    ({"sim_coeff": -1.0}, "loss.vicreg.sim_coeff"), ({"cov_coeff": float("nan")},
                                                     "loss.vicreg.cov_coeff"),
])
def test_bad_fields_are_named(change, field):
  with pytest.raises(ValueError, match=field):
    objectives.make(config(**change))


def test_vicreg_has_no_negatives_to_weigh():
  c = config()
  c.weighting.name = "hcl"
  with pytest.raises(ValueError, match="weighting.name"):
    objectives.make(c)


@pytest.mark.parametrize("call,name", [
    (lambda: vicreg_loss(np.ones((4, 3)), np.ones((4, 2))), "z1"),
    (lambda: vicreg_loss(np.ones((1, 3)), np.ones((1, 3))), "at least 2 rows"),
    (lambda: vicreg_loss(np.full((4, 3), np.nan), np.ones((4, 3))), "z1 contains NaN"),
    (lambda: vicreg_loss(np.ones((4, 3)), np.ones((4, 3)), std_coeff=-1.0), "std_coeff"),
])
def test_bad_arguments_raise(call, name):
  with pytest.raises(ValueError, match=name):
    call()


def test_defaults_are_the_papers():
  hyper = objectives.default_config().loss.vicreg
  assert isinstance(hyper, ml_collections.ConfigDict)
  assert hyper.to_dict() == {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0,
                             "gamma": 1.0, "eps": 1e-4}
