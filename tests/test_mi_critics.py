"""contrax.mi.critics against a NumPy forward pass."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrax import mi

# ----------------------------------------------------------------------------- critics


def _mlp_np(params, x):
  layers = sorted(k for k in params if k.startswith("Dense_"))
  for i, name in enumerate(layers):
    x = x @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])
    if i < len(layers) - 1:
      x = np.maximum(x, 0.0)
  return x


def test_critics_match_numpy_forward():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
  critics = {"separable": mi.SeparableCritic(8, 5), "bilinear": mi.BilinearCritic(),
             "bilinear_enc": mi.BilinearCritic(8, 5), "concat": mi.ConcatCritic((8, 7))}

  @jax.jit
  def init_apply(key):  # one compile for all four critics
    out = {}
    for name, critic in critics.items():
      params = critic.init(key, x, y)
      out[name] = (params["params"], critic.apply(params, x, y))
    return out

  out = jax.tree.map(np.asarray, init_apply(jax.random.PRNGKey(0)))
  p, scores = out["separable"]
  np.testing.assert_allclose(scores, _mlp_np(p["g"], x) @ _mlp_np(p["h"], y).T,
                             rtol=1e-4, atol=1e-5)
  p, scores = out["bilinear"]
  np.testing.assert_allclose(scores, x @ p["w"] @ y.T, rtol=1e-4, atol=1e-5)
  p, scores = out["bilinear_enc"]
  np.testing.assert_allclose(scores, _mlp_np(p["g"], x) @ p["w"] @ _mlp_np(p["h"], y).T,
                             rtol=1e-4, atol=1e-5)
  p, scores = out["concat"]
  w_first = np.concatenate([p["first_x"]["kernel"], p["first_y"]["kernel"]])
  expected = np.zeros((6, 6))
  for i in range(6):
    for j in range(6):
      h = np.maximum(np.concatenate([x[i], y[j]]) @ w_first + p["first_x"]["bias"], 0)
      h = np.maximum(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
      expected[i, j] = (h @ p["out"]["kernel"] + p["out"]["bias"])[0]
  np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)


def test_critics_reject_unpaired_rows():
  with pytest.raises(ValueError, match="x and y"):
    mi.SeparableCritic().init(jax.random.PRNGKey(0), jnp.zeros((3, 2)), jnp.zeros((4, 2)))


def test_make_critic_builds_the_named_critic():
  assert mi.make_critic("separable", hidden_dim=8, embed_dim=5) == mi.SeparableCritic(8, 5)
  assert mi.make_critic("bilinear") == mi.BilinearCritic()
  assert mi.make_critic("concat", hidden_dim=7) == mi.ConcatCritic((7,))
  with pytest.raises(ValueError, match="critic"):
    mi.make_critic("quadratic")
