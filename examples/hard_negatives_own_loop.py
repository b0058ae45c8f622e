"""Hard negatives by optimal transport (HCL-OT) in your own Flax + optax loop.

    python examples/hard_negatives_own_loop.py [--steps 300]

Each step builds the batch geometry once (`contrax.pairs.build`: normalised rows, similarities,
masks), asks `contrax.weights.ot` for the entropic-OT coupling of the negatives (Jiang, Ishwar
and Aeron 2023: w_ij = 2B * pi_ij, self and positive pairs excluded), holds it constant with
`stop_gradient` (as the paper's code does) and scores InfoNCE with those negative weights and
the debiasing prior tau_plus (`contrax.losses.infonce_pairs`). Swap `weights.ot` for
`weights.hcl` (HCL) or `weights.uniform` (plain NT-Xent) to compare.
"""
from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from contrax import augment, data, pairs, weights
from contrax.losses import infonce_pairs


class Encoder(nn.Module):
  @nn.compact
  def __call__(self, images):
    h = nn.relu(nn.Dense(128)(images.reshape(images.shape[0], -1)))
    return nn.Dense(64)(nn.relu(nn.Dense(128)(h)))


def hcl_ot_loss(z1, z2, *, temperature=0.5, epsilon=0.7, tau_plus=0.1):
  geometry = pairs.build(z1, z2)
  w = jax.lax.stop_gradient(weights.ot(geometry, epsilon=epsilon))
  return infonce_pairs(geometry, temperature=temperature, weights=w, tau_plus=tau_plus)


def main(steps: int = 300, batch_size: int = 256, seed: int = 0) -> list[float]:
  dataset = data.load("digits", seed=seed)
  model, optimizer = Encoder(), optax.adam(1e-3)
  params = model.init(jax.random.key(seed), jnp.zeros((1, *dataset.train.image_shape)))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, images, key):
    view1, view2 = augment.two_views("digits", key, images, jnp.arange(images.shape[0]))

    def loss_fn(params):
      z1, z2 = jnp.split(model.apply(params, jnp.concatenate([view1, view2])), 2)
      return hcl_ot_loss(z1, z2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  batches, losses = data.batches(dataset.train, batch_size=batch_size, seed=seed), []
  for t in range(steps):
    images, _ = next(batches)
    params, opt_state, loss = step(params, opt_state, images, jax.random.key(t))
    losses.append(float(loss))
    if (t + 1) % 100 == 0:
      print(f"step {t + 1}: HCL-OT loss {losses[-1]:.4f}")
  return losses


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  main(parser.parse_args().steps)
