"""Exponential moving averages of parameters: the momentum encoders of MoCo, BYOL and DINO.

    target <- m * target + (1 - m) * online            (He et al. 2020; Grill et al. 2020)

with BYOL's schedule `m(t) = 1 - (1 - m_0) (cos(pi t / T) + 1) / 2`, rising from m_0 at step 0
to 1 at step T (Grill et al. 2020, "Bootstrap your own latent", section 3.2; DINO uses the same
schedule for its teacher). optax.incremental_update computes the same average, but takes the
step size `1 - m`; these two functions keep the papers' momentum `m` and its schedule in one
place for every method.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from contrax import _checks

__all__ = ["update", "cosine_momentum"]


def update(target, online, momentum):
  """`m * target + (1 - m) * online` leaf by leaf (`momentum` may be traced)."""
  return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


def cosine_momentum(step, total_steps: int, base: float):
  """BYOL's momentum at update `step` of `total_steps`: `1 - (1 - base)(cos(pi t/T) + 1)/2`."""
  _checks.positive_int("total_steps", total_steps)
  if not 0.0 <= base <= 1.0:
    raise ValueError(f"base momentum must be in [0, 1], got {base!r}")
  t = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps) / total_steps
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * t) + 1.0) / 2.0
