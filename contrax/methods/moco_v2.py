"""MoCo v2: a momentum encoder and a queue of its keys (Chen, Fan, Girshick, He 2020, *Improved
Baselines with Momentum Contrastive Learning*, arXiv 2003.04297; MoCo: He et al. 2020, CVPR).

Objective. Query q = g(f(x1)) (the online encoder + MLP projection head on view 1), key
k = g'(f'(x2)) (the momentum encoder on view 2, no gradient), both L2-normalised; with the
queue's K past keys as negatives (the batch's other keys are not negatives):

    loss = (1/B) Σ_i -log( exp(q_iᵀk_i / t) / (exp(q_iᵀk_i / t) + Σ_j exp(q_iᵀ queue_j / t)) )

(`contrax.losses.query_key_infonce(q, k, queue=..., batch_negatives=False)`). After the
optimiser step the momentum encoder moves towards the new parameters,
`θ' <- m θ' + (1 - m) θ`, and the global batch's keys replace the queue's oldest
(`contrax.methods._queue`). Defaults (the paper's): m = 0.999, K = 65536, t = 0.2; the MLP head,
blur augmentation and cosine schedule are the run's `model`, `augmentation` and optimiser.

Options beyond the paper: `symmetric` (MoCo v2 is asymmetric) adds the loss of the swapped
views (q from view 2 against k from view 1) and averages the two, enqueueing both views' keys;
`beta` and `tau_plus` weigh the queue negatives as HCL does (Robinson et al. 2021, whose
appendix pairs the weighting with MoCo-v2), `batch_negatives` adds the batch's other keys.

Across devices. The step runs under `shard_map` on the data axis: the loss is a mean over the
global batch; BatchNorm statistics are global (the model's `bn_axis_name`), which takes the
place of MoCo's shuffled BN (needed there because its BN was per device); every device
enqueues the same all-gathered global batch of keys, so the queue (replicated, see
`contrax.methods._queue` for why not sharded) and the momentum encoder equal the single-device
run's on the same global batch.

State (`TrainState.extra`): {"target": momentum-encoder params, "queue": [K, D] unit keys,
"ptr": the queue's write position}; `target` starts as the initial parameters, the queue as
random unit vectors drawn from the run's seed.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from contrax import _checks, augment
from contrax.losses.query_key import gather_rows, query_key_infonce
from contrax.methods import Method, _ema, _queue, _teacher, model_init

# Folded into the run's seed for the queue's initial random keys.
_QUEUE_SEED = 0x6D6F636F


def default_config() -> ml_collections.ConfigDict:
  """MoCo v2's hyper-parameters (Chen et al. 2020) and the HCL / symmetric options (off)."""
  c = ml_collections.ConfigDict()
  c.momentum = 0.999         # m of the momentum encoder
  c.queue_size = 65536       # K keys
  c.temperature = 0.2        # t
  c.symmetric = False        # MoCo v2 is asymmetric
  c.batch_negatives = False  # the batch's other keys are not negatives in MoCo v2
  c.beta = 0.0               # HCL hardness of the negative weights; 0 = uniform
  c.tau_plus = 0.0           # debiasing prior (HCL: 0.1)
  return c


def build(config: ml_collections.ConfigDict, model) -> Method:
  """MoCo v2 on `model` with `config.method.moco_v2` and the run's augmentation and seed."""
  c = config.method.moco_v2
  return method(model, config.augmentation, seed=config.seed, momentum=c.momentum,
                queue_size=c.queue_size, temperature=c.temperature, symmetric=c.symmetric,
                batch_negatives=c.batch_negatives, beta=c.beta, tau_plus=c.tau_plus)


def _bool(name: str, value) -> bool:
  if not isinstance(value, bool):
    raise TypeError(f"method.moco_v2.{name} must be a bool, got {value!r}")
  return value


def method(model, augmentation, *, seed: int = 0, momentum: float = 0.999,
           queue_size: int = 65536, temperature: float = 0.2, symmetric: bool = False,
           batch_negatives: bool = False, beta: float = 0.0, tau_plus: float = 0.0) -> Method:
  """The MoCo v2 `Method` (module docstring); every argument is checked here, eagerly."""
  momentum = _checks.in_range("method.moco_v2.momentum", momentum, 0.0, 1.0, include_high=True)
  queue_size = _checks.positive_int("method.moco_v2.queue_size", queue_size)
  loss_options = dict(
      temperature=_checks.positive("method.moco_v2.temperature", temperature),
      batch_negatives=_bool("batch_negatives", batch_negatives),
      beta=_checks.non_negative("method.moco_v2.beta", beta),
      tau_plus=_checks.in_range("method.moco_v2.tau_plus", tau_plus, 0.0, 1.0))
  symmetric = _bool("symmetric", symmetric)
  augmentation = augment.get(augmentation)
  dim = model.head.projection_dim
  queue_key = jax.random.fold_in(jax.random.key(seed), _QUEUE_SEED)

  def init_extra(params):
    return {"target": params, **_queue.init(queue_key, queue_size, dim)}

  def apply(variables, views, extra):
    online = views if symmetric else views[:1]
    keyed = views[::-1] if symmetric else views[1:]  # the key of query v is the other view
    (h, q), updates = model.apply(variables, jnp.concatenate(online), train=True,
                                  mutable=["batch_stats"])
    b = views[0].shape[0]
    target = {"params": jax.lax.stop_gradient(extra["target"]),
              "batch_stats": variables["batch_stats"]}
    (_, k), _ = model.apply(target, jnp.concatenate(keyed), train=True, mutable=["batch_stats"])
    outputs = {"q": q, "k": jax.lax.stop_gradient(k), "features": h[:b], "projections": q[:b]}
    return outputs, updates.get("batch_stats", {})

  def loss(outputs, extra, *, axis_name, step):
    del step
    qs = jnp.split(outputs["q"], 2 if symmetric else 1)
    ks = jnp.split(outputs["k"], 2 if symmetric else 1)
    value = sum(query_key_infonce(q, k, queue=extra["queue"], axis_name=axis_name,
                                  **loss_options) for q, k in zip(qs, ks)) / len(qs)
    return value, {"loss": value}

  def update_extra(extra, params, outputs, *, axis_name, step):
    del step
    # Keys in global row order: view by view, each the global batch in device order.
    keys = jnp.concatenate([gather_rows(k, axis_name)
                            for k in jnp.split(outputs["k"], 2 if symmetric else 1)])
    queue = _queue.enqueue({"queue": extra["queue"], "ptr": extra["ptr"]}, keys)
    return {"target": _ema.update(extra["target"], params, momentum), **queue}

  return Method(name="moco_v2", model=model, num_views=2,
                views=functools.partial(augment.two_views, augmentation),
                init=model_init(model), apply=apply, loss=loss, init_extra=init_extra,
                update_extra=update_extra, embeddings=_teacher.first_view_embeddings)
