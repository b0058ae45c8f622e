"""NNCLR: nearest-neighbour positives from a support set (Dwibedi, Aytar, Tompson, Sermanet,
Zisserman 2021, *With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning of
Visual Representations*, ICCV, arXiv 2104.14548).

Objective. Projections z = g(f(x)) of both views, predictions p = h(z) (a predictor MLP,
`models.ProjectionHead`), all L2-normalised; NN(z, Q) = the support-set row with the largest
cosine similarity to z (no gradient). For the global batch of B images,

    L(a, b) = (1/B) Σ_i -log( exp(NN(a_i)ᵀ b_i / t) / Σ_k exp(NN(a_i)ᵀ b_k / t) )
    loss    = (L(z1, p2) + L(z2, p1)) / 2

(`contrax.losses.query_key_infonce(NN(z1), p2)`: the positive and the B - 1 other predictions
of the global batch in the denominator), as the paper's eq. (2) symmetrised, with the predictor,
and as solo-learn's NNCLR. After the step the global batch's z1 (normalised, no gradient)
replaces the support set's oldest rows (`contrax.methods._queue`; replicated on every device,
which enqueues the same all-gathered batch, so the support set equals the single-device run's).

Defaults (the paper's section 4): support set 98304, t = 0.1, predictor hidden width 4096 with
BatchNorm (output: the projection size). The predictor's parameters live under
`params['predictor']` (and its BatchNorm statistics under `batch_stats['predictor']`), beside
the model's, so `model.apply(variables, x)` still evaluates the encoder.

State (`TrainState.extra`): {"queue": [Q, D] unit support set, "ptr": its write position},
starting as random unit vectors drawn from the run's seed (as the official implementations).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from contrax import _checks, augment, models, parallel
from contrax import pairs as pairs_lib
from contrax.losses.query_key import gather_rows, query_key_infonce
from contrax.methods import Method, _queue, _teacher

PREDICTOR = "predictor"
# Folded into the run's seed for the support set's initial random rows.
_QUEUE_SEED = 0x6E6E636C


def default_config() -> ml_collections.ConfigDict:
  """NNCLR's hyper-parameters (Dwibedi et al. 2021, section 4)."""
  c = ml_collections.ConfigDict()
  c.queue_size = 98304         # support set size
  c.temperature = 0.1          # t
  c.predictor_hidden_dim = 4096
  return c


def build(config: ml_collections.ConfigDict, model) -> Method:
  """NNCLR on `model` with `config.method.nnclr` and the run's augmentation and seed."""
  c = config.method.nnclr
  return method(model, config.augmentation, seed=config.seed, queue_size=c.queue_size,
                temperature=c.temperature, predictor_hidden_dim=c.predictor_hidden_dim)


def nearest_neighbours(z: jax.Array, support: jax.Array) -> jax.Array:
  """The row of `support` (unit rows) with the largest cosine similarity to each row of `z`,
  without gradient (ties: the lowest index)."""
  sims = pairs_lib.l2_normalize(z) @ support.T
  return jax.lax.stop_gradient(support[jnp.argmax(sims, axis=1)])


def method(model, augmentation, *, seed: int = 0, queue_size: int = 98304,
           temperature: float = 0.1, predictor_hidden_dim: int = 4096) -> Method:
  """The NNCLR `Method` (module docstring); every argument is checked here, eagerly."""
  queue_size = _checks.positive_int("method.nnclr.queue_size", queue_size)
  temperature = _checks.positive("method.nnclr.temperature", temperature)
  hidden = _checks.positive_int("method.nnclr.predictor_hidden_dim", predictor_hidden_dim)
  augmentation = augment.get(augmentation)
  dim = model.head.projection_dim
  predictor = models.ProjectionHead(projection_dim=dim, hidden_dim=hidden, batch_norm=True,
                                    bn_axis_name=parallel.DATA_AXIS)
  queue_key = jax.random.fold_in(jax.random.key(seed), _QUEUE_SEED)

  def init(key, image_shape):
    variables = models.init_variables(model, key, image_shape)
    head = jax.jit(lambda key, z: predictor.init(key, z, train=False))(
        jax.random.fold_in(key, 1), jnp.zeros((2, dim), jnp.float32))
    return {"params": {**variables["params"], PREDICTOR: head["params"]},
            "batch_stats": {**variables["batch_stats"], PREDICTOR: head["batch_stats"]}}

  def init_extra(params):
    del params
    return _queue.init(queue_key, queue_size, dim)

  def apply(variables, views, extra):
    del extra
    params, stats = dict(variables["params"]), dict(variables["batch_stats"])
    head = {"params": params.pop(PREDICTOR), "batch_stats": stats.pop(PREDICTOR)}
    (h, z), model_updates = model.apply({"params": params, "batch_stats": stats},
                                        jnp.concatenate(views), train=True,
                                        mutable=["batch_stats"])
    p, head_updates = predictor.apply(head, z, train=True, mutable=["batch_stats"])
    batch_stats = {**model_updates.get("batch_stats", {}),
                   PREDICTOR: head_updates["batch_stats"]}
    b = views[0].shape[0]
    return {"z": z, "p": p, "features": h[:b], "projections": z[:b]}, batch_stats

  def loss(outputs, extra, *, axis_name, step):
    del step
    z1, z2 = jnp.split(outputs["z"], 2)
    p1, p2 = jnp.split(outputs["p"], 2)
    support = extra["queue"]
    value = (query_key_infonce(nearest_neighbours(z1, support), p2, temperature=temperature,
                               axis_name=axis_name)
             + query_key_infonce(nearest_neighbours(z2, support), p1, temperature=temperature,
                                 axis_name=axis_name)) / 2
    return value, {"loss": value}

  def update_extra(extra, params, outputs, *, axis_name, step):
    del params, step
    z1, _ = jnp.split(outputs["z"], 2)
    return _queue.enqueue(extra, gather_rows(z1, axis_name))

  return Method(name="nnclr", model=model, num_views=2,
                views=functools.partial(augment.two_views, augmentation),
                init=init, apply=apply, loss=loss, init_extra=init_extra,
                update_extra=update_extra, embeddings=_teacher.first_view_embeddings)
