"""MoCo v3: queries from an online network with a predictor against a momentum encoder's keys.

Chen, Xie & He 2021, "An empirical study of training self-supervised vision transformers"
(ICCV). With queries q_v = q_θ(g_θ(f_θ(x_v))) (online encoder, projector, predictor), keys
k_v = g_θ̄(f_θ̄(x_v)) (the momentum encoder) of the two views and `x̂ = x / ‖x‖`:

    ctr(q, k) = (1/B) Σ_i −log( exp(q̂_iᵀk̂_i / τ) / Σ_j exp(q̂_iᵀk̂_j / τ) )
    L = 2τ [ ctr(q1, sg(k2)) + ctr(q2, sg(k1)) ]
    θ̄ <- m θ̄ + (1 − m) θ after each update,  m(k) = 1 − (1 − m_0)(cos(π k / K) + 1) / 2

over the global batch of B images, no queue: each device's queries score the keys of every
device (`contrax.losses.moco_v3_loss`, `contrax.losses.query_key_infonce`); the factor 2τ is the
official code's. The momentum encoder (encoder + projector) is extra state, in training mode
with BatchNorm's batch statistics and no running averages of its own, as BYOL's target
(`contrax.methods._teacher`), over the run's K = `steps`.

Defaults (the paper's, section 4 and appendix): base momentum m_0 = 0.99 with the cosine
schedule; τ = 0.2 (the paper's value, used by the official ViT recipes; the official ResNet-50
recipe uses 1.0); the predictor is Dense(4096) -> BN -> ReLU -> Dense(256) on 256-d
projections, a hidden width of 16 x the projection width (`predictor_hidden_ratio`, applied
to the run's `projection_dim`). Not reproduced: the 3-layer projector and the BN on the
output layers of the MLPs (the run's model sets the projector) and LARS / AdamW with a batch
of 4096 (the run's optimiser and batch).
"""
from __future__ import annotations

import functools

import ml_collections

from contrax import _checks, augment
from contrax.losses.predictive import moco_v3_loss
from contrax.methods import Method, _teacher


def default_config() -> ml_collections.ConfigDict:
  """`base_momentum` (0.99), `temperature` (0.2) and `predictor_hidden_ratio` (16: 4096 / 256),
  the paper's."""
  c = ml_collections.ConfigDict()
  c.base_momentum = 0.99
  c.temperature = 0.2
  c.predictor_hidden_ratio = 16.0
  return c


def build(config: ml_collections.ConfigDict, model) -> Method:
  """MoCo v3 on `model` with the config's augmentation, `method.moco_v3.*` and its `steps`."""
  hyper = config.method.moco_v3
  return method(model, config.augmentation, total_steps=config.steps,
                base_momentum=hyper.base_momentum, temperature=hyper.temperature,
                predictor_hidden=_teacher.hidden_dim(model.head.projection_dim,
                                                     hyper.predictor_hidden_ratio))


def method(model, augmentation, *, total_steps: int, base_momentum: float = 0.99,
           temperature: float = 0.2, predictor_hidden: int = 4096) -> Method:
  """The MoCo v3 `Method` (module docstring) of `model`, with its momentum encoder's momentum
  rising from `base_momentum` to 1 over `total_steps` updates."""
  t = _checks.check_temperature(temperature)
  return _teacher.method("moco_v3", model, augment.get(augmentation), hidden=predictor_hidden,
                         loss_fn=functools.partial(moco_v3_loss, temperature=t),
                         momentum=_teacher.cosine_momentum(base_momentum, total_steps))
