"""Training methods: what one step computes, as a record of plain functions.

A `Method` says how a step turns a uint8 batch into a loss; `contrax.train.make_train_step`
composes its parts in one jitted `shard_map` step:

    views = method.views(key, images, sample_ids)                 # augmentation, on device
    outputs, batch_stats = method.apply(variables, views, extra)  # the networks, train mode
    loss, metrics = method.loss(outputs, extra, axis_name=axis, step=step)  # global mean
    ... gradients, optax update ...
    extra = method.update_extra(extra, params, outputs, axis_name=axis, step=step)

`extra` is the method's state beside the parameters (empty for SimCLR; an EMA target network
for BYOL, a queue of past embeddings for MoCo) and is saved in checkpoints with the rest of the
`TrainState`. The parameters are `method.init`'s: the model's, plus any head only training
uses (a predictor) under its own top-level key, so `method.model.apply(variables, x)` still
evaluates the encoder. Methods are built by functions such as
`contrax.methods.contrastive.method`.

The step also trains an online linear probe and computes collapse diagnostics
(`contrax.monitor`) on the first view's encoder features h and projections z. A method whose
`apply` already computes them says where they are in its outputs (`embeddings`); otherwise
the step runs `model` on the first view once more for them (no gradient flows from it).

A run picks its method by name from its config, as it picks a weighting:

    method.name:           a name in `NAMES` ("simclr": the contrastive objectives; "byol",
                           "simsiam", "moco_v3": the methods with a predictor)
    method.<name>.<hyper>: that method's hyper-parameters (its module's `default_config()`)

Each method is one module here with `default_config()` (its hyper-parameters and their
paper defaults) and `build(config, model) -> Method` (the run's config, the encoder +
projection model of `contrax.models.create`); adding one is that module plus its `_MODULES`
entry. `create(config, model)` builds the config's method.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, NamedTuple, Optional

import jax
import ml_collections

from contrax import models

__all__ = [
    "Method", "model_init", "no_extra", "keep_extra", "NAMES", "default_config", "create",
]

# name -> module with default_config() and build(config, model) (imported on use: the modules
# import this one for `Method`).
_MODULES = {
    "simclr": "contrax.methods.contrastive",
    "byol": "contrax.methods.byol",
    "simsiam": "contrax.methods.simsiam",
    "moco_v3": "contrax.methods.moco_v3",
    "moco_v2": "contrax.methods.moco_v2",
    "nnclr": "contrax.methods.nnclr",
    "swav": "contrax.methods.swav",
    "dino": "contrax.methods.dino",
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
    init: `(key, image_shape) -> {'params', 'batch_stats'}`: the trained variables
      (`model_init(model)` when the model is all there is).
    apply: `(variables, views, extra) -> (outputs, new_batch_stats)`: the networks in train
      mode (`variables` holds 'params' and 'batch_stats'; a target network reads `extra`).
    loss: `(outputs, extra, *, axis_name, step) -> (scalar loss, dict of scalar metrics)`;
      the loss is a mean over the global batch, so its gradient is already the all-device
      gradient. `step` is the (traced) number of the update being computed.
    init_extra: `params -> extra` (a pytree; `{}` when the method keeps no extra state).
    update_extra: `(extra, new_params, outputs, *, axis_name, step) -> extra` after the
      optimiser update (the same on every device: reduce over `axis_name` what differs).
    embeddings: `outputs -> (h, z)`, the first view's encoder features and projections as
      `apply` computed them (local rows), for the online probe and the collapse
      diagnostics; None (the default): the step computes them with `model` on the first view
      in train mode, discarding its BatchNorm statistics (one more forward pass).
  """
  name: str
  model: Any
  num_views: int
  views: Callable[..., tuple[jax.Array, ...]]
  init: Callable[[jax.Array, tuple], dict]
  apply: Callable[..., tuple[Any, Any]]
  loss: Callable[..., tuple[jax.Array, dict]]
  init_extra: Callable[[Any], Any]
  update_extra: Callable[..., Any]
  embeddings: Optional[Callable[[Any], tuple[jax.Array, jax.Array]]] = None


def model_init(model) -> Callable[[jax.Array, tuple], dict]:
  """`init` of a method whose trained variables are the model's (`models.init_variables`)."""
  return functools.partial(models.init_variables, model)


def no_extra(params) -> dict:
  """`init_extra` of a method without extra state."""
  del params
  return {}


def keep_extra(extra, params, outputs, *, axis_name=None, step=None):
  """`update_extra` of a method without extra state."""
  del params, outputs, axis_name, step
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
