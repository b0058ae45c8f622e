"""Pieces of the methods with a predictor and a target network (BYOL, SimSiam, MoCo v3), kept
in one place for every method with a training-only head or a momentum teacher.

Parameters. A method's trained parameters are the model's (`'encoder'`, `'head'`) plus each
training-only head's under its own top-level key, e.g. `params['predictor']`; its batch
statistics likewise. `model_variables` takes the model's part back (the model's `apply`
ignores the extra keys anyway, so evaluation and checkpoints see the encoder as usual).

Views. Each view goes through the networks as its own batch, as in the papers' code (BYOL's
JAX code, SimSiam's and MoCo v3's PyTorch code): BatchNorm normalises each view by its own
(global, with a BN axis) batch statistics, and the running averages are updated by view 1 and
then by view 2.

Target network (BYOL, MoCo v3). The extra state `{'target': θ̄}` holds a copy of the model's
parameters; after each update `θ̄ <- m θ̄ + (1 − m) θ` with the schedule `m(step)`
(`contrax.methods._ema`). The target runs in training mode, as in the papers' code, so its
BatchNorm layers use the current batch statistics; their running averages are never read
(the target is not evaluated), so the target keeps none: it is applied with the online
network's (unused) running averages and its updates are discarded. Its outputs carry no
gradient (`jax.lax.stop_gradient`).
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from contrax import _checks, augment, models
from contrax.methods import Method, _ema, keep_extra, no_extra

PREDICTOR = "predictor"

# (p1, p2, t1, t2, *, axis_name) -> scalar: predictions and targets of the two views.
PredictiveLoss = Callable[..., jax.Array]


def hidden_dim(projection_dim: int, ratio: float) -> int:
  """The predictor's hidden width `round(ratio · projection_dim)` (at least 1): the papers'
  widths relative to the projection (BYOL, MoCo v3: 4096 / 256 = 16; SimSiam: 512 / 2048)."""
  _checks.positive_int("projection_dim", projection_dim)
  _checks.positive("predictor_hidden_ratio", ratio)
  return max(1, round(ratio * projection_dim))


def check_momentum(name: str, value: float) -> float:
  """A base EMA momentum in [0, 1]."""
  return _checks.in_range(name, value, 0.0, 1.0, include_high=True)


def predictor(model: models.ContrastiveModel, hidden: int) -> models.ProjectionHead:
  """The predictor q of BYOL, SimSiam and MoCo v3: Dense(hidden) -> BN -> ReLU ->
  Dense(projection_dim), mapping projections to predictions of the same width.

  Its BatchNorm averages over the same mesh axis as the model's head (global batch statistics
  under `shard_map`) and it computes in the head's dtype.
  """
  head = model.head
  return models.ProjectionHead(projection_dim=head.projection_dim,
                               hidden_dim=_checks.positive_int("predictor_hidden", hidden),
                               batch_norm=True, bn_axis_name=head.bn_axis_name, dtype=head.dtype)


def init_with_heads(model: models.ContrastiveModel, heads: Mapping[str, nn.Module]):
  """`Method.init` of `model` plus training-only `heads` (name -> module reading the model's
  projections `[n, projection_dim]`), each under its own top-level key of the variables."""
  clash = set(heads) & {"encoder", "head"}
  if clash:
    raise ValueError(f"head names {sorted(clash)} clash with the model's parameters")

  def init(key: jax.Array, image_shape: tuple) -> dict:
    model_key, *head_keys = jax.random.split(key, 1 + len(heads))
    variables = models.init_variables(model, model_key, image_shape)
    params, batch_stats = dict(variables["params"]), dict(variables["batch_stats"])
    z = jnp.zeros((2, model.head.projection_dim), jnp.float32)
    for (name, head), head_key in zip(heads.items(), head_keys):
      # One compiled program instead of one dispatch per initialiser op, as models does.
      head_vars = jax.jit(lambda k, z, head=head: head.init(k, z, train=False))(head_key, z)
      params[name] = head_vars["params"]
      batch_stats[name] = head_vars.get("batch_stats", {})
    return {"params": params, "batch_stats": batch_stats}
  return init


def model_variables(variables: dict, heads=(PREDICTOR,)) -> dict:
  """The model's own `{'params', 'batch_stats'}`: `variables` without the heads' keys."""
  return {c: {k: v for k, v in variables[c].items() if k not in heads}
          for c in ("params", "batch_stats")}


def head_variables(variables: dict, name: str) -> dict:
  return {c: variables[c][name] for c in ("params", "batch_stats")}


def apply_per_view(module: nn.Module, variables: dict, inputs, *, project: bool = False):
  """`module` in training mode on each input as its own batch, the running averages updated
  by each in turn; returns `(outputs per input, final batch_stats)`. `project`: the module is a
  ContrastiveModel and the output is its projection z."""
  params, batch_stats = variables["params"], variables["batch_stats"]
  outputs = []
  for x in inputs:
    out, updates = module.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
    outputs.append(out[1] if project else out)
    batch_stats = updates.get("batch_stats", batch_stats)
  return tuple(outputs), batch_stats


def apply_target(model: models.ContrastiveModel, target_params, batch_stats, views):
  """The target network's projections of `views` (training-mode BN with the batch
  statistics; running averages discarded), without gradient."""
  projections, _ = apply_per_view(model, {"params": target_params, "batch_stats": batch_stats},
                                  views, project=True)
  return tuple(jax.lax.stop_gradient(z) for z in projections)


def ema_target(params, heads=(PREDICTOR,)) -> dict:
  """`init_extra` of a method with a target network: `{'target': the model's parameters}`."""
  return {"target": {k: v for k, v in params.items() if k not in heads}}


def ema_update(momentum: Callable[[jax.Array], jax.Array], heads=(PREDICTOR,)):
  """`update_extra` moving the target toward the updated online parameters:
  `θ̄ <- m θ̄ + (1 − m) θ` with `m = momentum(step)` (step = the update just made)."""
  def update_extra(extra, params, outputs, *, axis_name=None, step=None):
    del outputs, axis_name
    online = {k: v for k, v in params.items() if k not in heads}
    return {**extra, "target": _ema.update(extra["target"], online, momentum(step))}
  return update_extra


def cosine_momentum(base: float, total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """`step -> 1 − (1 − base)(cos(π step / T) + 1) / 2` (BYOL's schedule, also MoCo v3's),
  checked now."""
  check_momentum("base_momentum", base)
  _checks.positive_int("steps", total_steps)
  return functools.partial(_ema.cosine_momentum, total_steps=total_steps, base=base)


def method(name: str, model: models.ContrastiveModel, augmentation, *, hidden: int,
           loss_fn: PredictiveLoss,
           momentum: Optional[Callable[[jax.Array], jax.Array]] = None) -> Method:
  """A two-view method with a predictor q on the online projections and targets.

  Views: `augment.two_views(augmentation, ...)`. Networks: per view (module docstring), the
  online projections z_v = g(f(x_v)), the predictions p_v = q(z_v) (`predictor(model,
  hidden)`, parameters under 'predictor') and the targets t_v: with `momentum` (a function of
  the step), the EMA target network's projections (extra state `{'target': θ̄}`, updated after
  every step with `m = momentum(step)`); without, `stop_gradient(z_v)` (SimSiam; no extra
  state). Loss: `loss_fn(p1, p2, t1, t2, axis_name=...)`, reported as 'loss'.
  """
  augmentation = augment.get(augmentation)
  head = predictor(model, hidden)

  def apply(variables, views, extra):
    online = model_variables(variables)
    hz, model_stats = apply_per_view(model, online, views)
    z = tuple(zv for _, zv in hz)
    p, head_stats = apply_per_view(head, head_variables(variables, PREDICTOR), z)
    if momentum is None:
      targets = tuple(jax.lax.stop_gradient(zv) for zv in z)
    else:
      targets = apply_target(model, extra["target"], online["batch_stats"], views)
    outputs = {"predictions": p, "targets": targets, "features": hz[0][0], "projections": z[0]}
    return outputs, {**model_stats, PREDICTOR: head_stats}

  def loss(outputs, extra, *, axis_name, step):
    del extra, step
    (p1, p2), (t1, t2) = outputs["predictions"], outputs["targets"]
    value = loss_fn(p1, p2, t1, t2, axis_name=axis_name)
    return value, {"loss": value}

  return Method(name=name, model=model, num_views=2,
                views=functools.partial(augment.two_views, augmentation),
                init=init_with_heads(model, {PREDICTOR: head}), apply=apply, loss=loss,
                init_extra=no_extra if momentum is None else ema_target,
                update_extra=keep_extra if momentum is None else ema_update(momentum),
                embeddings=first_view_embeddings)


def first_view_embeddings(outputs) -> tuple[jax.Array, jax.Array]:
  """`Method.embeddings` of methods whose outputs hold the first view's encoder features and
  projections under 'features' and 'projections' (for the online probe and diagnostics)."""
  return outputs["features"], outputs["projections"]
