"""Negative weightings (contrax.weights) against float64 NumPy oracles written from the formulas."""
from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from contrax import weights
from contrax._numerics import masked_softmax
from oracles import fd_grad, on_views, rel_err

B, D = 4, 6


def stacked_unit(z1, z2):
  z = np.concatenate([z1, z2]).astype(np.float64)
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def negative_mask(b):
  n = 2 * b
  i = np.arange(n)
  mask = np.ones((n, n), bool)
  mask[i, i] = False
  mask[i, (i + b) % n] = False
  return mask


def views(seed):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(B, D)).astype(np.float32),
          rng.normal(size=(B, D)).astype(np.float32))


def test_uniform():
  z1, z2 = views(0)
  w = np.asarray(on_views(weights.uniform)(z1, z2))
  mask = negative_mask(B)
  np.testing.assert_allclose(w, np.where(mask, 1.0 / (2 * B - 2), 0.0), rtol=1e-7, atol=0)


def test_masked_softmax_is_zero_off_mask_and_stochastic():
  scores = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
  mask = np.random.default_rng(2).random((5, 7)) < 0.6
  mask[:, 0] = True
  w = np.asarray(masked_softmax(jnp.asarray(scores), jnp.asarray(mask)))
  e = np.where(mask, np.exp(scores.astype(np.float64)), 0.0)
  np.testing.assert_allclose(w, e / e.sum(1, keepdims=True), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("t", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_hcl_matches_oracle(t, beta):
  z1, z2 = views(3)
  z = stacked_unit(z1, z2)
  mask = negative_mask(B)
  e = np.where(mask, np.exp(beta * (z @ z.T) / t), 0.0)
  want = e / e.sum(1, keepdims=True)
  got = np.asarray(on_views(weights.hcl)(z1, z2, beta=beta, temperature=t))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def oracle_alpha_direct(z1, z2, p, eps_alpha, t):
  z = stacked_unit(z1, z2)
  mask = negative_mask(B)
  d2 = np.maximum(1.0 - z @ z.T, 0.0)
  e = np.where(mask, np.exp(-d2 ** (p / 2) / t), 0.0)
  return e / (e.sum(1, keepdims=True) + eps_alpha * (2 * B - 2))


@pytest.mark.parametrize("t", [0.05, 0.5, 2.0])
@pytest.mark.parametrize("p,eps_alpha", [(4.0, 0.0), (2.0, 0.0), (1.0, 0.2), (4.0, 1.0)])
def test_alpha_direct_matches_oracle(t, p, eps_alpha):
  z1, z2 = views(4)
  got = np.asarray(on_views(weights.alpha_direct)(z1, z2, p=p, eps_alpha=eps_alpha, temperature=t))
  np.testing.assert_allclose(got, oracle_alpha_direct(z1, z2, p, eps_alpha, t), rtol=1e-5,
                             atol=1e-7)
  sums = got.sum(1)
  if eps_alpha == 0:
    np.testing.assert_allclose(sums, 1.0, rtol=1e-6)
  else:
    assert np.all(sums < 1.0)


def test_alpha_direct_is_differentiable_and_detached_only_by_the_caller():
  """No hidden stop-gradient: the gradient is the oracle's; the caller's stop_gradient zeroes it."""
  z1, z2 = views(5)
  alpha = on_views(weights.alpha_direct)
  g = jax.grad(lambda a: jnp.sum(alpha(a, z2, temperature=0.5) ** 2))(z1)
  (want,) = fd_grad(lambda a: np.sum(oracle_alpha_direct(a, z2, 4.0, 0.0, 0.5) ** 2), z1)
  assert rel_err([g], [want]) < 1e-3
  g = jax.grad(lambda a: jnp.sum(jax.lax.stop_gradient(alpha(a, z2, temperature=0.5)) ** 2))(z1)
  assert np.all(np.asarray(g) == 0.0)


@pytest.mark.parametrize("t", [0.05, 0.5, 2.0])
def test_entropy_player_and_alpha_direct_p2_are_hcl_beta_1(t):
  """softmax_j(-d²_ij/t) (α-CL's entropy player) = alpha_direct(p=2) = hcl(beta=1), float64."""
  z1, z2 = views(8)
  z = stacked_unit(z1, z2)
  e = np.where(negative_mask(B), np.exp(-(1.0 - z @ z.T) / t), 0.0)
  want = e / e.sum(1, keepdims=True)
  for got in (on_views(weights.hcl)(z1, z2, beta=1.0, temperature=t),
              on_views(weights.alpha_direct)(z1, z2, p=2.0, eps_alpha=0.0, temperature=t)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-7)


def test_registry_holds_every_weighting_and_each_takes_pairs():
  assert sorted(weights.REGISTRY) == sorted(["uniform", "hcl", "alpha_direct", "inverse_power",
                                             "sparsemax", "ot", "quadratic_ot"])
  z1, z2 = views(9)
  for name, fn in weights.REGISTRY.items():
    w = np.asarray(on_views(fn)(z1, z2), np.float64)
    mask = negative_mask(B)
    assert w.shape == (2 * B, 2 * B), name
    assert np.all(w[~mask] == 0.0) and np.all(w >= 0.0), name
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5, err_msg=name)


def test_weights_sharded_equal_single_device():
  """Under a named vmap (the collectives of shard_map), each shard's rows are the matching
  rows of the single-device weights."""
  n_dev = 2
  z1, z2 = views(6)
  b = B // n_dev
  split = lambda z: z.reshape(n_dev, b, D)
  for fn in (lambda a, c, ax: on_views(weights.hcl)(a, c, beta=1.0, temperature=0.5, axis_name=ax),
             lambda a, c, ax: on_views(weights.alpha_direct)(a, c, p=4.0, temperature=0.5,
                                                             axis_name=ax)):
    full = np.asarray(fn(z1, z2, None))
    shards = np.asarray(jax.vmap(lambda a, c: fn(a, c, "data"), axis_name="data")(
        split(z1), split(z2)))
    for k in range(n_dev):
      rows = np.r_[k * b:(k + 1) * b, B + k * b:B + (k + 1) * b]
      np.testing.assert_allclose(shards[k], full[rows], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs,name", [
    (dict(p=0.0), "p"), (dict(eps_alpha=-1.0), "eps_alpha"), (dict(temperature=0.0), "temperature")])
def test_alpha_direct_bad_arguments(kwargs, name):
  z1, z2 = views(7)
  with pytest.raises(ValueError, match=name):
    on_views(weights.alpha_direct)(z1, z2, **kwargs)
