"""Training methods: what one step computes, as a record of plain functions.

A `Method` says how a step turns a uint8 batch into a loss; `contrax.train.make_train_step`
composes its parts in one jitted `shard_map` step:

    views = method.views(key, images, sample_ids)          # augmentation, on device
    outputs, batch_stats = method.apply(variables, views)  # the online networks, train mode
    loss, metrics = method.loss(outputs, extra, axis_name)  # local rows x global columns
    ... gradients, optax update ...
    extra = method.update_extra(extra, params, outputs)    # e.g. an EMA target, a queue

`extra` is the method's state beside the parameters (empty for SimCLR; an EMA target network
for BYOL, a queue of past embeddings for MoCo) and is saved in checkpoints with the rest of the
`TrainState`. Methods are built by functions such as `contrax.methods.contrastive.method`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

__all__ = [
    "Method", "no_extra", "keep_extra",
]


class Method(NamedTuple):
  """The parts of a training step (all pure functions, traced inside the step).

  Attributes:
    name: a label for logs.
    model: the Flax module whose `encode` gives the evaluation features h = f(x).
    num_views: how many views `views` returns.
    views: `(key, images uint8 [b, H, W, C], sample_ids int [b]) -> tuple of views`; view v
      of sample i depends only on (key, v, sample_ids[i]), never on its place in the batch.
    apply: `(variables, views) -> (outputs, new_batch_stats)`: the online networks in train
      mode (`variables` holds 'params' and 'batch_stats').
    loss: `(outputs, extra, axis_name) -> (scalar loss, dict of scalar metrics)`; the loss is
      a mean over the global batch, so its gradient is already the all-device gradient.
    init_extra: `params -> extra` (a pytree; `{}` when the method keeps no extra state).
    update_extra: `(extra, new_params, outputs) -> extra` after the optimiser update.
  """
  name: str
  model: Any
  num_views: int
  views: Callable[..., tuple[jax.Array, ...]]
  apply: Callable[..., tuple[Any, Any]]
  loss: Callable[..., tuple[jax.Array, dict]]
  init_extra: Callable[[Any], Any]
  update_extra: Callable[[Any, Any, Any], Any]


def no_extra(params) -> dict:
  """`init_extra` of a method without extra state."""
  del params
  return {}


def keep_extra(extra, params, outputs):
  """`update_extra` of a method without extra state."""
  del params, outputs
  return extra
