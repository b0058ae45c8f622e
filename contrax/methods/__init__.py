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

A run picks its method by name from its config, as it picks a weighting:

    method.name:           a name in `NAMES` ("simclr": the contrastive objectives)
    method.<name>.<hyper>: that method's hyper-parameters (its module's `default_config()`)

Each method is one module here with `default_config()` (its hyper-parameters and their
paper defaults) and `build(config, model) -> Method` (the run's config, the encoder +
projection model of `contrax.models.create`); adding one is that module plus its `_MODULES`
entry. `create(config, model)` builds the config's method.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

import jax
import ml_collections

__all__ = [
    "Method", "no_extra", "keep_extra", "NAMES", "default_config", "create",
]

# name -> module with default_config() and build(config, model) (imported on use: the modules
# import this one for `Method`).
_MODULES = {
    "simclr": "contrax.methods.contrastive",
}
NAMES = tuple(_MODULES)


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


def _module(name: str):
  if name not in _MODULES:
    raise ValueError(f"method.name={name!r} is not a method; valid choices: "
                     f"{', '.join(NAMES)}")
  return importlib.import_module(_MODULES[name])


def default_config() -> ml_collections.ConfigDict:
  """`method.name` ("simclr") and one sub-dict per method with hyper-parameters."""
  c = ml_collections.ConfigDict()
  c.name = "simclr"
  for name in NAMES:
    hyper = _module(name).default_config()
    if hyper:
      c[name] = hyper
  return c


def create(config: ml_collections.ConfigDict, model) -> Method:
  """The `Method` named by `config.method.name`, built from the run's config and `model`."""
  return _module(config.method.name).build(config, model)
