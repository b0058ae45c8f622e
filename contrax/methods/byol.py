"""BYOL: an online network with a predictor regresses an EMA target network's projection.

Grill et al. 2020, "Bootstrap your own latent: a new approach to self-supervised learning"
(NeurIPS). With online projections z_v = g_θ(f_θ(x_v)), predictions p_v = q_θ(z_v), target
projections t_v = g_θ̄(f_θ̄(x_v)) of the two views v = 1, 2 and `x̂ = x / ‖x‖`:

    L = (1/B) Σ_i [ ‖p̂1_i − sg(t̂2_i)‖² + ‖p̂2_i − sg(t̂1_i)‖² ]      (global batch B)
    θ̄ <- m θ̄ + (1 − m) θ after each update,  m(k) = 1 − (1 − m_0)(cos(π k / K) + 1) / 2

(`contrax.losses.byol_loss`; the EMA and its schedule are `contrax.methods._teacher`'s, over
the run's K = `steps`). The target network (encoder + projector) starts as a copy of the
online one and is extra state; it runs in training mode with BatchNorm's batch statistics and
keeps no running averages of its own (they would never be read).

Defaults (the paper's, section 3.2 and appendix C): base momentum m_0 = 0.996; the predictor
is Dense(4096) -> BN -> ReLU -> Dense(256) on 256-d projections, i.e. a hidden width of 16 x
the projection width (`predictor_hidden_ratio`, applied to the run's `projection_dim`). Not
reproduced: the paper's 4096-wide projector (the run's model sets the projector), its
asymmetric augmentations (both views use the run's `augmentation`) and LARS with 4096 images
per batch (the run's optimiser and batch).
"""
from __future__ import annotations

import ml_collections

from contrax import augment
from contrax.losses.predictive import byol_loss
from contrax.methods import Method, _teacher


def default_config() -> ml_collections.ConfigDict:
  """`base_momentum` (0.996) and `predictor_hidden_ratio` (16: 4096 / 256), the paper's."""
  c = ml_collections.ConfigDict()
  c.base_momentum = 0.996
  c.predictor_hidden_ratio = 16.0
  return c


def build(config: ml_collections.ConfigDict, model) -> Method:
  """BYOL on `model` with the config's augmentation, `method.byol.*` and its `steps`."""
  hyper = config.method.byol
  return method(model, config.augmentation, total_steps=config.steps,
                base_momentum=hyper.base_momentum,
                predictor_hidden=_teacher.hidden_dim(model.head.projection_dim,
                                                     hyper.predictor_hidden_ratio))


def method(model, augmentation, *, total_steps: int, base_momentum: float = 0.996,
           predictor_hidden: int = 4096) -> Method:
  """The BYOL `Method` (module docstring) of `model`, with its target's momentum rising from
  `base_momentum` to 1 over `total_steps` updates."""
  return _teacher.method("byol", model, augment.get(augmentation), hidden=predictor_hidden,
                         loss_fn=byol_loss,
                         momentum=_teacher.cosine_momentum(base_momentum, total_steps))
