"""SimSiam: a predictor regresses the other view's projection, whose gradient is stopped.

Chen & He 2021, "Exploring simple Siamese representation learning" (CVPR). With projections
z_v = g(f(x_v)), predictions p_v = q(z_v) of the two views and `D(p, z) = −cos(p, z)`:

    L = (1/2) D(p1, sg(z2)) + (1/2) D(p2, sg(z1)),   averaged over the global batch

(`contrax.losses.simsiam_loss`): one network, no target copy, no extra state; the
stop-gradient alone prevents collapse (the paper's section 4).

Defaults (the paper's, section 3): the predictor is Dense(512) -> BN -> ReLU -> Dense(2048)
on 2048-d projections, a bottleneck of 1/4 of the projection width (`predictor_hidden_ratio`,
applied to the run's `projection_dim`). Not reproduced: the 3-layer projector with BN on its
output (the run's model sets the projector) and SGD with a fixed predictor learning rate (the
run's optimiser).
"""
from __future__ import annotations

import ml_collections

from contrax import augment
from contrax.losses.predictive import simsiam_loss
from contrax.methods import Method, _teacher


def default_config() -> ml_collections.ConfigDict:
  """`predictor_hidden_ratio` (0.25: 512 / 2048), the paper's."""
  c = ml_collections.ConfigDict()
  c.predictor_hidden_ratio = 0.25
  return c


def build(config: ml_collections.ConfigDict, model) -> Method:
  """SimSiam on `model` with the config's augmentation and `method.simsiam.*`."""
  return method(model, config.augmentation, predictor_hidden=_teacher.hidden_dim(
      model.head.projection_dim, config.method.simsiam.predictor_hidden_ratio))


def method(model, augmentation, *, predictor_hidden: int = 512) -> Method:
  """The SimSiam `Method` (module docstring) of `model`."""
  return _teacher.method("simsiam", model, augment.get(augmentation), hidden=predictor_hidden,
                         loss_fn=simsiam_loss)
