"""SimCLR with contrax's loss and augmentation in your own Flax + optax training loop.

    python examples/simclr_own_loop.py [--steps 300]

A small Flax encoder, `optax.adam`, and a jitted step you write yourself; contrax supplies
the on-device augmentation (`contrax.augment.two_views`) and the NT-Xent loss
(`contrax.losses.infonce`). The embedded digits data (8x8 images) keeps it to seconds on a
CPU; the kNN accuracy of the features is printed before and after training.
"""
from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from contrax import augment, data, evaluate
from contrax.losses import infonce


class Encoder(nn.Module):
  """Features h = f(x) for evaluation and a projection z = g(h) for the loss."""

  @nn.compact
  def __call__(self, images):
    h = nn.relu(nn.Dense(128)(images.reshape(images.shape[0], -1)))
    z = nn.Dense(64)(nn.relu(nn.Dense(128)(h)))
    return h, z


def main(steps: int = 300, batch_size: int = 256, seed: int = 0) -> float:
  dataset = data.load("digits", seed=seed)
  model, optimizer = Encoder(), optax.adam(1e-3)
  params = model.init(jax.random.key(seed), jnp.zeros((1, *dataset.train.image_shape)))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, images, key):
    # Per-sample keys from the sample's index: the same image gets the same views however
    # the batch is laid out.
    view1, view2 = augment.two_views("digits", key, images, jnp.arange(images.shape[0]))

    def loss_fn(params):
      _, z = model.apply(params, jnp.concatenate([view1, view2]))
      z1, z2 = jnp.split(z, 2)
      return infonce(z1, z2, temperature=0.5)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def knn_accuracy(params) -> float:
    def features(split):
      images, labels = split[np.arange(len(split))]
      return model.apply(params, augment.to_float(images))[0], labels
    return evaluate.knn(*features(dataset.train), *features(dataset.test), k=20,
                        num_classes=dataset.num_classes)

  print(f"kNN accuracy before training: {knn_accuracy(params):.3f}")
  batches = data.batches(dataset.train, batch_size=batch_size, seed=seed)
  for t in range(steps):
    images, _ = next(batches)
    params, opt_state, loss = step(params, opt_state, images, jax.random.key(t))
    if (t + 1) % 100 == 0:
      print(f"step {t + 1}: loss {float(loss):.4f}")
  accuracy = knn_accuracy(params)
  print(f"kNN accuracy after {steps} steps: {accuracy:.3f}")
  return accuracy


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  main(parser.parse_args().steps)
