"""SimCLR-style contrastive methods: two augmented views, one encoder + projection head, and an
objective `loss_fn(z1, z2, *, axis_name) -> scalar` on the two projections.

Every contrastive objective of the project (InfoNCE / NT-Xent of Chen et al. 2020 and its
debiased, decoupled and hard-negative variants, α-CL of Tian 2022, Barlow Twins) is such a
`loss_fn`; this module turns one into a `Method` for `contrax.train.make_train_step`.
"""
from __future__ import annotations

import functools
from typing import Callable, Union

import jax
import jax.numpy as jnp

import ml_collections

from contrax import augment, objectives
from contrax.methods import Method, keep_extra, model_init, no_extra

LossFn = Callable[..., jax.Array]  # (z1, z2, *, axis_name) -> scalar


def default_config() -> ml_collections.ConfigDict:
  """No hyper-parameters of its own: the objective is the run's `loss.*` and `weighting.*`."""
  return ml_collections.ConfigDict()


def build(config: ml_collections.ConfigDict, model) -> Method:
  """SimCLR-style training of `model` on the config's objective (`contrax.objectives.make`)
  with the config's augmentation on both views."""
  return method(model, objectives.make(config), augment.get(config.augmentation),
                name=objectives.describe(config))


def method(model, loss_fn: LossFn, augmentation: Union[str, augment.Augmentation],
           name: str = "simclr") -> Method:
  """The `Method` of `loss_fn` on `model`'s projections of two views.

  Views: `augment.two_views(augmentation, key, images, sample_ids)` (view v of sample i uses
  `fold_in(fold_in(key, v), sample_ids[i])`). Networks: both views go through `model` as one
  batch `[view1; view2]` (so BatchNorm sees both), giving `h = [h1; h2]`, `z = [z1; z2]`;
  the outputs are `{'projections': (z1, z2), 'features': h1}` (h1 for the online probe).
  Loss: `loss_fn(z1, z2, axis_name=axis_name)`, reported as the metric 'loss'. No extra state.
  """
  augmentation = augment.get(augmentation)
  return Method(name=name, model=model, num_views=2,
                views=functools.partial(augment.two_views, augmentation),
                init=model_init(model), apply=functools.partial(_apply, model),
                loss=functools.partial(_loss, loss_fn),
                init_extra=no_extra, update_extra=keep_extra, embeddings=_embeddings)


def _apply(model, variables, views, extra):
  del extra
  (features, proj), updates = model.apply(variables, jnp.concatenate(views), train=True,
                                          mutable=["batch_stats"])
  outputs = {"projections": tuple(jnp.split(proj, len(views))),
             "features": features[:views[0].shape[0]]}
  return outputs, updates.get("batch_stats", {})


def _embeddings(outputs):
  return outputs["features"], outputs["projections"][0]


def _loss(loss_fn, outputs, extra, *, axis_name, step):
  del extra, step
  z1, z2 = outputs["projections"]
  loss = loss_fn(z1, z2, axis_name=axis_name)
  return loss, {"loss": loss}
