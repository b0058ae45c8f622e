"""Empirical NTK against an explicit `jax.jacrev` Jacobian product; drift and movement formulas."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrax import models
from contrax.theory import ntk


class TanhNet(nn.Module):
  """A generic network (biases, tanh) that does not follow the layer-wise NTK contract."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(6)(x))
    return nn.Dense(3)(x)


def jacobian_gram(apply_fn, params, x):
  """float64 J Jᵀ with J materialised by jax.jacrev (the oracle)."""
  jac = jax.jit(jax.jacrev(lambda p: apply_fn(p, x).reshape(-1)))(params)
  rows = np.asarray(apply_fn(params, x)).size
  j = np.concatenate([np.asarray(a, np.float64).reshape(rows, -1) for a in jax.tree.leaves(jac)],
                     axis=1)
  return j @ j.T


def to64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def inputs(n=4, d=5, seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), (n, d), dtype)


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_empirical_ntk_matches_jacobian_product_float64(chunk_size):
  with jax.enable_x64(True):
    x = inputs(dtype=jnp.float64)
    model = TanhNet()
    params = to64(model.init(jax.random.key(1), x)["params"])
    apply_fn = lambda p, xx: model.apply({"params": p}, xx)
    theta = ntk.empirical_ntk(apply_fn, params, x, chunk_size=chunk_size)
    assert theta.shape == (12, 12)
    np.testing.assert_allclose(np.asarray(theta), jacobian_gram(apply_fn, params, x),
                               rtol=0, atol=1e-10)


def test_empirical_ntk_float32_within_1e5_of_float64_oracle():
  x = inputs()
  model = TanhNet()
  params = model.init(jax.random.key(1), x)["params"]
  apply_fn = lambda p, xx: model.apply({"params": p}, xx)
  theta = np.asarray(jax.jit(ntk.empirical_ntk, static_argnums=0)(apply_fn, params, x))
  with jax.enable_x64(True):
    ref = jacobian_gram(apply_fn, to64(params), jnp.asarray(x, jnp.float64))
  assert np.max(np.abs(theta - ref)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))


@pytest.mark.parametrize("make", [
    lambda: models.NTKMLP(width=16, depth=2, out_dim=3),
    lambda: models.NTKMLP(width=8, depth=3, out_dim=2, sigma_w=1.3, sigma_out=0.7),
    lambda: models.AllenZhuMLP(width=16, depth=2, out_dim=3),
])
def test_layerwise_ntk_matches_jacobian_product(make):
  model = make()
  with jax.enable_x64(True):
    x = inputs(dtype=jnp.float64)
    variables = to64(model.init(jax.random.key(2), x))
    apply_fn = lambda p, xx: model.apply({**variables, "params": p}, xx)
    ref = jacobian_gram(apply_fn, variables["params"], x)
    theta = ntk.layerwise_ntk(model, variables, x)
    np.testing.assert_allclose(np.asarray(theta), ref, rtol=0, atol=1e-10)
    generic = ntk.empirical_ntk(apply_fn, variables["params"], x, chunk_size=4)
    np.testing.assert_allclose(np.asarray(generic), ref, rtol=0, atol=1e-10)
    blocks = ntk.layerwise_ntk(model, variables, x, per_layer=True)
    assert sorted(blocks) == sorted(variables["params"])
    for name, block in blocks.items():
      only = lambda w, xx, name=name: model.apply(
          {**variables, "params": {**variables["params"], name: w}}, xx)
      np.testing.assert_allclose(np.asarray(block),
                                 jacobian_gram(only, variables["params"][name], x),
                                 rtol=0, atol=1e-10)


def test_layerwise_ntk_float32_within_1e5_of_float64_oracle():
  model = models.NTKMLP(width=32, depth=2, out_dim=3)
  x = inputs(n=5)
  variables = model.init(jax.random.key(3), x)
  theta = np.asarray(ntk.layerwise_ntk(model, variables, x))
  with jax.enable_x64(True):
    v64 = to64(variables)
    ref = jacobian_gram(lambda p, xx: model.apply({"params": p}, xx), v64["params"],
                        jnp.asarray(x, jnp.float64))
  assert np.max(np.abs(theta - ref)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))


def test_allen_zhu_trains_only_hidden_layers_and_freezes_the_ends():
  model = models.AllenZhuMLP(width=64, depth=3, out_dim=4)
  variables = model.init(jax.random.key(0), inputs(d=7))
  assert sorted(variables["params"]) == ["W1", "W2", "W3"]
  assert variables["frozen"]["A"].shape == (7, 64) and variables["frozen"]["B"].shape == (64, 4)
  # N(0, 2/m) hidden and first layers, N(0, 1/d) last layer (loose moment checks).
  assert abs(float(jnp.var(variables["params"]["W2"])) * 64 / 2 - 1) < 0.1
  assert abs(float(jnp.var(variables["frozen"]["B"])) * 4 - 1) < 0.3


def test_ntk_mlp_parameterisation_is_standard_normal_with_explicit_scale():
  model = models.NTKMLP(width=64, depth=1, out_dim=2, sigma_w=1.5, sigma_out=1.0)
  x = inputs(n=3, d=7)
  variables = model.init(jax.random.key(0), x)
  w1, w2 = variables["params"]["W1"], variables["params"]["W2"]
  assert abs(float(jnp.var(w1)) - 1) < 0.15
  expected = jax.nn.relu(x @ w1 * 1.5 / np.sqrt(7)) @ w2 / np.sqrt(64)
  np.testing.assert_allclose(np.asarray(model.apply(variables, x)), np.asarray(expected),
                             rtol=1e-5, atol=1e-6)


def test_layerwise_ntk_rejects_models_without_the_contract():
  model = TanhNet()
  x = inputs()
  variables = model.init(jax.random.key(1), x)
  with pytest.raises(ValueError, match="dense kernel"):
    ntk.layerwise_ntk(model, variables, x)


def test_model_arguments_are_checked():
  with pytest.raises(ValueError, match="width"):
    models.NTKMLP(width=0, depth=2, out_dim=3)
  with pytest.raises(TypeError, match="depth"):
    models.AllenZhuMLP(width=4, depth=2.0, out_dim=3)


def test_drift_movement_and_min_eigenvalue_against_numpy():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(6, 6))
  theta_0 = a @ a.T
  theta_t = theta_0 + 0.1 * rng.normal(size=(6, 6))
  theta_t = theta_t + theta_t.T
  assert np.isclose(float(ntk.kernel_drift(theta_t, theta_0)),
                    np.linalg.norm(theta_t - theta_0) / np.linalg.norm(theta_0), rtol=1e-5)
  assert np.isclose(float(ntk.min_eigenvalue(theta_0)), np.linalg.eigvalsh(theta_0)[0],
                    rtol=1e-4, atol=1e-5)
  p0 = {"W1": rng.normal(size=(3, 4)), "inner": {"W2": rng.normal(size=(4, 2))}}
  pt = jax.tree.map(lambda w: w + rng.normal(size=w.shape), p0)
  moved = ntk.parameter_movement(pt, p0)
  assert sorted(moved) == ["W1", "inner/W2"]
  for key, (wt, w0) in {"W1": (pt["W1"], p0["W1"]),
                        "inner/W2": (pt["inner"]["W2"], p0["inner"]["W2"])}.items():
    assert np.isclose(float(moved[key]), np.linalg.norm(wt - w0) / np.linalg.norm(w0), rtol=1e-5)
  with pytest.raises(ValueError, match="theta_t and theta_0"):
    ntk.kernel_drift(theta_t, theta_0[:5, :5])


def test_parameter_movement_of_zero_initialised_bias_is_relative_to_the_layer():
  # A Dense layer with kernel 3·I (‖kernel‖_F = 3·√2) and a zero bias; the bias moves by
  # (3, 4) (‖Δ‖ = 5) and the kernel by 0.3 in one entry. Relative to the layer at init:
  # bias 5 / (3√2), kernel 0.3 / (3√2); a zero layer reports the absolute movement.
  p0 = {"Dense_0": {"kernel": 3.0 * np.eye(2), "bias": np.zeros(2)},
        "Dense_1": {"kernel": np.zeros((2, 1)), "bias": np.zeros(1)}}
  pt = {"Dense_0": {"kernel": 3.0 * np.eye(2) + np.array([[0.0, 0.3], [0.0, 0.0]]),
                    "bias": np.array([3.0, 4.0])},
        "Dense_1": {"kernel": np.array([[1.0], [0.0]]), "bias": np.array([2.0])}}
  moved = {k: float(v) for k, v in ntk.parameter_movement(pt, p0).items()}
  assert all(np.isfinite(v) for v in moved.values())
  assert moved["Dense_0/bias"] == pytest.approx(5.0 / (3.0 * math.sqrt(2.0)), rel=1e-6)
  assert moved["Dense_0/kernel"] == pytest.approx(0.3 / (3.0 * math.sqrt(2.0)), rel=1e-6)
  assert moved["Dense_1/kernel"] == pytest.approx(1.0, rel=1e-6)
  assert moved["Dense_1/bias"] == pytest.approx(2.0, rel=1e-6)
  with pytest.raises(ValueError, match="chunk_size"):
    ntk.empirical_ntk(lambda p, x: x * p, 1.0, jnp.ones((2, 2)), chunk_size=0)
