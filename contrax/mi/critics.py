"""Flax critics `T(x, y)` scoring all K² pairs of K paired rows at once: `[K, d_x], [K, d_y]
-> [K, K]` with the joint pairs on the diagonal (the input of `contrax.mi.estimators`).

The x and y encoders of the separable and bilinear critics are `contrax.models.ProjectionHead`
without batch norm: `Dense(hidden_dim) → ReLU → Dense(embed_dim)`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax

from contrax import _checks
from contrax.models import ProjectionHead


def _encoder(hidden_dim: int, embed_dim: int, name: str) -> ProjectionHead:
  return ProjectionHead(projection_dim=embed_dim, hidden_dim=hidden_dim, batch_norm=False,
                        name=name)


def _check_pairs(x: jax.Array, y: jax.Array) -> None:
  _checks.rank("x", x, 2)
  _checks.rank("y", y, 2)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"x and y must hold the same number K of paired rows, got x{x.shape} and "
                     f"y{y.shape}")


class SeparableCritic(nn.Module):
  """`S_ij = g(x_i)ᵀ h(y_j)` with two MLP encoders g, h (Poole et al. 2019's separable critic),
  each `Dense(hidden_dim) → ReLU → Dense(embed_dim)`."""
  hidden_dim: int = 256
  embed_dim: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_pairs(x, y)
    gx = _encoder(self.hidden_dim, self.embed_dim, "g")(x)
    hy = _encoder(self.hidden_dim, self.embed_dim, "h")(y)
    return gx @ hy.T


class BilinearCritic(nn.Module):
  """`S_ij = u_iᵀ W v_j` with `u = g(x)`, `v = h(y)`: MLP encoders `Dense(hidden_dim) → ReLU →
  Dense(embed_dim)` when `hidden_dim` is given, the raw inputs when it is None."""
  hidden_dim: Optional[int] = None
  embed_dim: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_pairs(x, y)
    if self.hidden_dim is not None:
      x = _encoder(self.hidden_dim, self.embed_dim, "g")(x)
      y = _encoder(self.hidden_dim, self.embed_dim, "h")(y)
    w = self.param("w", nn.initializers.normal(1.0 / math.sqrt(x.shape[1] * y.shape[1])),
                   (x.shape[1], y.shape[1]))
    return x @ w @ y.T


class ConcatCritic(nn.Module):
  """`S_ij = MLP([x_i, y_j])`, the joint critic, evaluated on all K² pairs by broadcasting.

  The first layer `W [x; y] + b = W_x x + W_y y + b` is split by linearity: `W_x x_i` and
  `W_y y_j` are computed once per row and summed by broadcasting into `[K, K, h]`, which is
  the same function as concatenating the K² pairs at a fraction of the cost.
  """
  hidden_sizes: Sequence[int] = (256,)

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    _check_pairs(x, y)
    if not self.hidden_sizes:
      raise ValueError(f"hidden_sizes must name at least one layer, got {self.hidden_sizes!r}")
    first, *rest = self.hidden_sizes
    hx = nn.Dense(first, name="first_x")(x)
    hy = nn.Dense(first, use_bias=False, name="first_y")(y)
    h = nn.relu(hx[:, None, :] + hy[None, :, :])
    for width in rest:
      h = nn.relu(nn.Dense(width)(h))
    return nn.Dense(1, name="out")(h)[..., 0]


CRITICS = {"separable": SeparableCritic, "bilinear": BilinearCritic, "concat": ConcatCritic}


def make_critic(name: str, *, hidden_dim: int = 256, embed_dim: int = 32) -> nn.Module:
  """The critic `name` in `CRITICS`: separable `SeparableCritic(hidden_dim, embed_dim)`,
  bilinear `BilinearCritic()` on the raw inputs (`xᵀ W y`), concat
  `ConcatCritic((hidden_dim,))`."""
  _checks.choice("critic", name, CRITICS)
  hidden_dim = _checks.positive_int("hidden_dim", hidden_dim)
  embed_dim = _checks.positive_int("embed_dim", embed_dim)
  if name == "separable":
    return SeparableCritic(hidden_dim, embed_dim)
  if name == "bilinear":
    return BilinearCritic()
  return ConcatCritic((hidden_dim,))

