"""SwAV: online clustering with swapped assignment prediction over multi-crop views.

Caron et al. 2020, "Unsupervised learning of visual features by contrasting cluster
assignments" (NeurIPS; arXiv 2006.09882). Each view's projection z is L2-normalised and scored
against K prototypes c_k (unit columns of `params["prototypes"]`, a linear layer without
bias): s = z^T C. For each global crop s, codes Q come from the Sinkhorn-Knopp equipartition
of exp(S / eps) over the B samples of the GLOBAL batch (S: `[B, K]` scores of that crop):

    Q <- exp(S / eps) / sum(exp(S / eps))                       (total mass 1)
    repeat n times:  Q <- Q / (K * col_sums(Q))  (each prototype gets 1/K of the mass)
                     Q <- Q / (B * row_sums(Q))  (each sample gets 1/B of the mass)
    Q <- B Q                                                    (each sample's code sums to 1)

(Algorithm of the official `distributed_sinkhorn`, with K-sized all-reduces across devices,
so the codes equal the single-device ones.) The loss predicts each global crop's code from
every other crop (global or local):

    L = 1/G sum_{g < G} 1/(V-1) sum_{v != g} 1/B sum_i -sum_k Q^g_ik log softmax(s^v_i / tau)_k

with G global crops out of V views; the codes carry no gradient. Defaults are the paper's
ImageNet ones (`main_swav.py`): K = 3000, tau = 0.1, eps = 0.05, 3 Sinkhorn iterations,
2 global crops of scale (0.14, 1) and 6 local crops of scale (0.05, 0.14) (at 224 / 96 pixels
there; here the crop sizes are config fields, 0 = the input size).

Choices and what is left out:
  - Sinkhorn-Knopp is written out (log domain, `n` explicit iterations) rather than taken from
    ott-jax: ott's solver works on one geometry (every device would all-gather the `[B, K]`
    scores instead of all-reducing K-vectors), decides its iteration count by convergence
    checks, and starts from its own potential updates; SwAV's codes are defined by exactly
    3 iterations of the algorithm above, which this reproduces (in the log domain: the same
    numbers in exact arithmetic, without overflow of exp(S / eps)).
  - The prototypes are normalised in the forward pass (C = V / ||V|| column-wise) instead of
    being renormalised in place after each update as the official code does: a pure function
    of the parameters; the gradient is the one of the normalised layer.
  - No queue of past projections (the paper's option for batches smaller than ~256) and no
    prototype freezing in the first epoch.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from contrax import _checks, augment, models, pairs
from contrax.methods import Method, keep_extra, no_extra
from contrax.methods import _multicrop, _teacher

__all__ = ["default_config", "build", "method", "sinkhorn", "swav_loss", "prototype_scores"]

PROTOTYPES = "prototypes"


def default_config() -> ml_collections.ConfigDict:
  """SwAV's ImageNet hyper-parameters (Caron et al. 2020, `main_swav.py`)."""
  c = ml_collections.ConfigDict()
  c.num_prototypes = 3000
  c.temperature = 0.1
  c.epsilon = 0.05
  c.sinkhorn_iterations = 3
  c.update(_multicrop.crop_config(2, (0.14, 1.0), 6, (0.05, 0.14)))
  return c


def build(config: ml_collections.ConfigDict, model) -> Method:
  """SwAV on `model`'s projections with the config's `method.swav.*` and augmentation."""
  hyper = config.method.swav
  return method(model, augment.get(config.augmentation), _multicrop.crops_from_config(hyper),
                num_prototypes=hyper.num_prototypes, temperature=hyper.temperature,
                epsilon=hyper.epsilon, sinkhorn_iterations=hyper.sinkhorn_iterations)


def method(model, augmentation, crops: augment.MultiCrop, *, num_prototypes: int = 3000,
           temperature: float = 0.1, epsilon: float = 0.05,
           sinkhorn_iterations: int = 3) -> Method:
  """The SwAV `Method` (module docstring): views `augment.multi_crop(augmentation, crops, ...)`,
  parameters = the model's + `"prototypes"` `[projection_dim, num_prototypes]`, no extra state.
  """
  num_prototypes = _checks.positive_int("num_prototypes", num_prototypes)
  temperature = _checks.check_temperature(temperature)
  epsilon = _checks.positive("epsilon", epsilon)
  sinkhorn_iterations = _checks.positive_int("sinkhorn_iterations", sinkhorn_iterations)
  augmentation = augment.get(augmentation)
  return Method(
      name="swav", model=model, num_views=crops.num_views,
      views=functools.partial(augment.multi_crop, augmentation, crops),
      init=functools.partial(_init, model, num_prototypes),
      apply=functools.partial(_apply, model),
      loss=functools.partial(_loss, crops.num_global, temperature, epsilon, sinkhorn_iterations),
      init_extra=no_extra, update_extra=keep_extra, embeddings=_teacher.first_view_embeddings)


def _init(model, num_prototypes, key, image_shape):
  k_model, k_proto = jax.random.split(key)
  variables = models.init_variables(model, k_model, image_shape)
  dim = model.head.projection_dim
  # torch.nn.Linear's default init, U(-1/sqrt(d), 1/sqrt(d)) (the columns are normalised anyway).
  bound = 1.0 / math.sqrt(dim)
  prototypes = jax.random.uniform(k_proto, (dim, num_prototypes), jnp.float32, -bound, bound)
  return {"params": {**variables["params"], PROTOTYPES: prototypes},
          "batch_stats": variables["batch_stats"]}


def prototype_scores(z: jax.Array, prototypes: jax.Array) -> jax.Array:
  """`normalize(z) @ normalize(prototypes, columns)`: cosine scores `[n, K]` of projections
  `z [n, D]` against the prototype columns of `prototypes [D, K]`."""
  return pairs.l2_normalize(z) @ pairs.l2_normalize(prototypes, axis=0)


def _apply(model, variables, views, extra):
  del extra
  _multicrop.check_sizes(model, views, "method.swav")
  params = variables["params"]
  model_params = {k: v for k, v in params.items() if k != PROTOTYPES}

  def project(x, batch_stats):
    (h, z), updates = model.apply({"params": model_params, "batch_stats": batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    return (h, z), updates.get("batch_stats", {})

  hz, batch_stats = _multicrop.forward_groups(project, views, variables["batch_stats"])
  scores = tuple(prototype_scores(z, params[PROTOTYPES]) for _, z in hz)
  return {"scores": scores, "features": hz[0][0], "projections": hz[0][1]}, batch_stats


def _loss(num_global, temperature, epsilon, iterations, outputs, extra, *, axis_name, step):
  del extra, step
  loss = swav_loss(outputs["scores"], num_global=num_global, temperature=temperature, epsilon=epsilon,
                   num_iterations=iterations, axis_name=axis_name)
  return loss, {"loss": loss}


def _global_logsumexp_rows(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  """`log sum_i exp(x_ik)` over the rows of the global batch: `[1, K]` (max-shifted; the
  max is a constant for the sum, so pmax needs no gradient)."""
  shift = jax.lax.stop_gradient(jnp.max(x, axis=0, keepdims=True))
  if axis_name is not None:
    shift = jax.lax.pmax(shift, axis_name)
  total = jnp.sum(jnp.exp(x - shift), axis=0, keepdims=True)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  return shift + jnp.log(total)


def sinkhorn(scores: jax.Array, *, epsilon: float = 0.05, num_iterations: int = 3,
             axis_name: Optional[str] = None) -> jax.Array:
  """SwAV's Sinkhorn-Knopp codes `[b, K]` of this device's scores `[b, K]` (module docstring).

  Over the global batch of B = b x devices rows: after the iterations every row sums to 1
  (B times the final row normalisation to 1/B) and every column to about B/K (exactly B/K at
  the fixed point; uniform scores are already there: every code is 1/K). Computed in the log
  domain with `num_iterations` explicit iterations; no gradient flows through the codes.
  """
  _checks.rank("scores", scores, 2)
  epsilon = _checks.positive("epsilon", epsilon)
  num_iterations = _checks.positive_int("num_iterations", num_iterations)
  b, num_prototypes = scores.shape
  big_b = b * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  log_q = jax.lax.stop_gradient(scores) / epsilon
  log_q = log_q - jax.nn.logsumexp(_global_logsumexp_rows(log_q, axis_name))  # total mass 1
  for _ in range(num_iterations):
    log_q = log_q - _global_logsumexp_rows(log_q, axis_name) - math.log(num_prototypes)
    log_q = log_q - jax.nn.logsumexp(log_q, axis=1, keepdims=True) - math.log(big_b)
  return jax.lax.stop_gradient(jnp.exp(log_q + math.log(big_b)))


def swav_loss(scores: Sequence[jax.Array], *, num_global: int = 2, temperature: float = 0.1,
              epsilon: float = 0.05, num_iterations: int = 3,
              axis_name: Optional[str] = None) -> jax.Array:
  """SwAV's swapped-prediction loss (module docstring) of per-view prototype scores.

  Args:
    scores: one `[b, K]` array per view (this device's rows), the `num_global` global crops
      first; codes come only from those.
    num_global: G, the number of global crops (1 <= G <= number of views, at least 2 views).
    temperature: tau of the prediction softmax.
    epsilon, num_iterations: Sinkhorn's entropic regularisation and iteration count.
    axis_name: the data axis under `shard_map` (codes and mean over the global batch), or None.
  Returns:
    the scalar loss, a mean over the global batch (the same value on every device).
  """
  scores = tuple(scores)
  if len(scores) < 2:
    raise ValueError(f"scores needs at least 2 views, got {len(scores)}")
  for v, s in enumerate(scores):
    _checks.rank(f"scores[{v}]", s, 2)
    if s.shape != scores[0].shape:
      raise ValueError(f"scores[{v}] has shape {s.shape}, scores[0] has {scores[0].shape}; "
                       "every view needs the same [b, K]")
  num_global = _checks.positive_int("num_global", num_global)
  if num_global > len(scores):
    raise ValueError(f"num_global must be <= the number of views {len(scores)}, "
                     f"got {num_global}")
  temperature = _checks.check_temperature(temperature)
  log_p = [jax.nn.log_softmax(s / temperature, axis=1) for s in scores]
  total = jnp.asarray(0.0)  # a weak-typed zero: the dtype stays the scores'
  for g in range(num_global):
    q = sinkhorn(scores[g], epsilon=epsilon, num_iterations=num_iterations, axis_name=axis_name)
    cross = sum((-jnp.sum(q * log_p[v]) for v in range(len(scores)) if v != g),
                start=jnp.asarray(0))
    total = total + cross / (len(scores) - 1)
  b = scores[0].shape[0]
  big_b = b * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  return total / (num_global * big_b)
