"""Multi-crop plumbing shared by SwAV and DINO: the crop config fields and a forward pass that
runs each resolution's crops through a network as one batch.

Config fields (under `method.<name>`): num_global_crops, global_crop_size, global_crop_scale,
num_local_crops, local_crop_size, local_crop_scale; a size of 0 keeps the input's size (the
MLP encoder, which flattens a fixed image, needs it; convolutional encoders take any size).
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import ml_collections

from contrax import augment, models

__all__ = ["crop_config", "crops_from_config", "check_sizes", "forward_groups"]


def crop_config(num_global: int, global_scale: tuple[float, float], num_local: int,
                local_scale: tuple[float, float]) -> dict:
  """The six crop fields of a method's config (sizes 0 = the input's size)."""
  return dict(num_global_crops=num_global, global_crop_size=0,
              global_crop_scale=tuple(global_scale), num_local_crops=num_local,
              local_crop_size=0, local_crop_scale=tuple(local_scale))


def crops_from_config(hyper: ml_collections.ConfigDict) -> augment.MultiCrop:
  """`augment.MultiCrop` of a method's crop fields (checked there)."""
  return augment.MultiCrop(
      num_global=hyper.num_global_crops, global_size=hyper.global_crop_size or None,
      global_scale=tuple(hyper.global_crop_scale), num_local=hyper.num_local_crops,
      local_size=hyper.local_crop_size or None, local_scale=tuple(hyper.local_crop_scale))


def check_sizes(model, views, field: str) -> None:
  """An MLP encoder takes only its input's size: name the field when a crop size differs."""
  shapes = {v.shape[1:] for v in views}
  if isinstance(getattr(model, "encoder", None), models.MLP) and len(shapes) > 1:
    raise ValueError(f"{field}.global_crop_size / local_crop_size give views of shapes "
                     f"{sorted(shapes)}, but the 'mlp' encoder takes one image size; use 0 "
                     "(the input's size) for both, or a convolutional model")


def forward_groups(fn: Callable, views, batch_stats):
  """`fn(x, batch_stats) -> (y, batch_stats)` on runs of consecutive same-shape views, each run
  concatenated into one batch (so BatchNorm sees all crops of one resolution together, as the
  reference implementations forward them); returns the per-view outputs (a tuple per view
  where `y` is a tuple of arrays) and the batch statistics after the last run."""
  outputs: list = []  # an array per view, or a tuple of arrays per view
  start = 0
  while start < len(views):
    stop = start
    while stop < len(views) and views[stop].shape == views[start].shape:
      stop += 1
    y, batch_stats = fn(jnp.concatenate(views[start:stop]), batch_stats)
    if isinstance(y, tuple):  # several outputs per view: a tuple of them for each view
      outputs.extend(zip(*(jnp.split(part, stop - start) for part in y)))
    else:
      outputs.extend(jnp.split(y, stop - start))
    start = stop
  return tuple(outputs), batch_stats
