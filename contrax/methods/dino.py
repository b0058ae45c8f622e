"""DINO: self-distillation with no labels, a momentum teacher, centring and sharpening.

Caron et al. 2021, "Emerging properties in self-supervised vision transformers" (ICCV;
arXiv 2104.14294). A student g_s = head_s(f_s(x)) sees every crop; a teacher g_t, the EMA of
the student, sees the G global crops. The DINO head is an MLP (GELU, hidden width 2048, 3
layers) to a 256-d bottleneck, L2-normalised, then a weight-normalised linear layer (unit
columns, no bias) to K outputs. With the teacher's outputs centred by c and sharpened by a
low temperature tau_t, and the student's softened by tau_s:

    P_t(x) = softmax((g_t(x) - c) / tau_t),   P_s(x) = softmax(g_s(x) / tau_s)
    L = 1/|pairs| sum_{g < G} sum_{v != g} 1/B sum_i -sum_k P_t(x^g_i)_k log P_s(x^v_i)_k

(pairs: every global crop g against every view v except itself; the teacher side carries no
gradient). After each update (B rows of the GLOBAL batch, G B teacher outputs):

    c <- m_c c + (1 - m_c) mean_{g, i} g_t(x^g_i)                 (m_c = 0.9)
    teacher <- m teacher + (1 - m) student,   m = 1 - (1 - m_0)(cos(pi t / T) + 1) / 2

(m_0 = 0.996; T = the run's `steps`). The teacher temperature rises linearly from 0.04 to
tau_t = 0.07 over the warm-up steps (the paper's 30 warm-up epochs; 0 here = 30 % of the
run's steps, its 30 of 100 epochs), then stays; tau_s = 0.1. Head and crop defaults are
`main_dino.py`'s: K = 65536, 2 global crops of scale (0.4, 1) and 8 local crops of scale
(0.05, 0.4) (224 and 96 pixels there; here sizes are config fields, 0 = the input size).

The head replaces the model's projection head g, which DINO leaves unused (its parameters
stay in the tree; evaluation reads the encoder's features). Left out: gradient clipping
(3.0), freezing the last layer in the first epoch, and the per-view augmentation asymmetry
(blur / solarisation) of the reference pipeline: every crop uses the run's augmentation.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from contrax import _checks, augment, models, pairs
from contrax.methods import Method
from contrax.methods import _ema, _multicrop

__all__ = ["default_config", "build", "method", "DINOHead", "dino_loss", "teacher_temperature",
           "update_center"]

HEAD = "dino_head"


def default_config() -> ml_collections.ConfigDict:
  """DINO's hyper-parameters (Caron et al. 2021, `main_dino.py` and section 3.1)."""
  c = ml_collections.ConfigDict()
  c.out_dim = 65536
  c.hidden_dim = 2048
  c.bottleneck_dim = 256
  c.head_layers = 3
  c.student_temp = 0.1
  c.teacher_temp = 0.07
  c.warmup_teacher_temp = 0.04
  c.teacher_temp_warmup_steps = 0
  c.center_momentum = 0.9
  c.teacher_momentum = 0.996
  c.update(_multicrop.crop_config(2, (0.4, 1.0), 8, (0.05, 0.4)))
  return c


def build(config: ml_collections.ConfigDict, model) -> Method:
  """DINO on `model`'s encoder with the config's `method.dino.*`, augmentation and `steps`."""
  h = config.method.dino
  steps = _checks.positive_int("steps", config.steps)
  warmup = _checks.non_negative("method.dino.teacher_temp_warmup_steps",
                                h.teacher_temp_warmup_steps)
  head = DINOHead(out_dim=h.out_dim, hidden_dim=h.hidden_dim, bottleneck_dim=h.bottleneck_dim,
                  num_layers=h.head_layers)
  return method(model, head, augment.get(config.augmentation), _multicrop.crops_from_config(h),
                total_steps=steps, student_temp=h.student_temp, teacher_temp=h.teacher_temp,
                warmup_teacher_temp=h.warmup_teacher_temp,
                teacher_temp_warmup_steps=int(warmup) if warmup else int(round(0.3 * steps)),
                center_momentum=h.center_momentum, teacher_momentum=h.teacher_momentum)


class DINOHead(nn.Module):
  """MLP (Dense-GELU x (num_layers - 1), Dense to bottleneck_dim) -> L2 normalise -> weight-
  normalised linear layer without bias to `out_dim` (kernel `last_layer` `[bottleneck, K]`
  used as V / ||V|| column-wise: DINO's `norm_last_layer=True`, weight_g fixed at 1).
  The MLP's Dense layers start from N(0, 0.02^2) truncated, biases 0, as in `main_dino.py`."""
  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  num_layers: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, kernel_init=nn.initializers.truncated_normal(0.02),
                              bias_init=nn.initializers.zeros)
    for _ in range(self.num_layers - 1):
      x = nn.gelu(dense(self.hidden_dim)(x), approximate=False)
    x = pairs.l2_normalize(dense(self.bottleneck_dim)(x))
    # torch.nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the reference's last
    # layer keeps it (it is built after the truncated-normal init of the MLP).
    v = self.param("last_layer", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                   (self.bottleneck_dim, self.out_dim))
    return x @ pairs.l2_normalize(v, axis=0)


def method(model, head: DINOHead, augmentation, crops: augment.MultiCrop, *, total_steps: int,
           student_temp: float = 0.1, teacher_temp: float = 0.07,
           warmup_teacher_temp: float = 0.04, teacher_temp_warmup_steps: int = 0,
           center_momentum: float = 0.9, teacher_momentum: float = 0.996) -> Method:
  """The DINO `Method` (module docstring). Parameters: the model's + `"dino_head"`; extra
  state: `{"teacher": <a copy of the parameters>, "center": zeros [K]}`."""
  if not isinstance(head, DINOHead):
    raise TypeError(f"head must be a DINOHead, got {head!r}")
  for name, value in (("out_dim", head.out_dim), ("hidden_dim", head.hidden_dim),
                      ("bottleneck_dim", head.bottleneck_dim), ("head_layers", head.num_layers)):
    _checks.positive_int(name, value)
  total_steps = _checks.positive_int("total_steps", total_steps)
  _checks.check_temperature(student_temp)
  _checks.check_temperature(teacher_temp)
  _checks.check_temperature(warmup_teacher_temp)
  teacher_temp_warmup_steps = int(_checks.non_negative("teacher_temp_warmup_steps",
                                                       teacher_temp_warmup_steps))
  _checks.in_range("center_momentum", center_momentum, 0.0, 1.0, include_high=True)
  _checks.in_range("teacher_momentum", teacher_momentum, 0.0, 1.0, include_high=True)
  if crops.num_views < 2:
    raise ValueError(f"DINO needs at least 2 crops, got {crops.num_views}")
  augmentation = augment.get(augmentation)
  temps = dict(student_temp=student_temp, teacher_temp=teacher_temp,
               warmup_teacher_temp=warmup_teacher_temp, warmup_steps=teacher_temp_warmup_steps)
  return Method(
      name="dino", model=model, num_views=crops.num_views,
      views=functools.partial(augment.multi_crop, augmentation, crops),
      init=functools.partial(_init, model, head),
      apply=functools.partial(_apply, model, head, crops.num_global),
      loss=functools.partial(_loss, temps),
      init_extra=functools.partial(_init_extra, head.out_dim),
      update_extra=functools.partial(_update_extra, center_momentum, teacher_momentum,
                                     total_steps),
      embeddings=_embeddings)


def _init(model, head, key, image_shape):
  k_model, k_head = jax.random.split(key)
  variables = models.init_variables(model, k_model, image_shape)
  features = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((1, *image_shape)), method="encode"), variables)
  head_params = jax.jit(head.init)(k_head, jnp.zeros((1, features.shape[-1])))["params"]
  return {"params": {**variables["params"], HEAD: head_params},
          "batch_stats": variables["batch_stats"]}


def _init_extra(out_dim, params):
  return {"teacher": params, "center": jnp.zeros((out_dim,), jnp.float32)}


def _network(model, head, params, views, batch_stats):
  """`head(encoder(x))` of each view in train mode; returns the outputs, the first view's
  encoder features and the batch statistics."""
  model_params = {k: v for k, v in params.items() if k != HEAD}

  def forward(x, stats):
    h, updates = model.apply({"params": model_params, "batch_stats": stats}, x, True,
                             method="encode", mutable=["batch_stats"])
    return (head.apply({"params": params[HEAD]}, h), h), updates.get("batch_stats", {})

  outputs, batch_stats = _multicrop.forward_groups(forward, views, batch_stats)
  return tuple(out for out, _ in outputs), outputs[0][1], batch_stats


def _apply(model, head, num_global, variables, views, extra):
  _multicrop.check_sizes(model, views, "method.dino")
  student, features, batch_stats = _network(model, head, variables["params"], views,
                                            variables["batch_stats"])
  # The teacher in train mode (batch statistics, as the reference runs it); its BN running
  # statistics are not kept.
  teacher, _, _ = _network(model, head, jax.lax.stop_gradient(extra["teacher"]),
                           views[:num_global], variables["batch_stats"])
  return {"student": student, "teacher": tuple(jax.lax.stop_gradient(t) for t in teacher),
          "features": features}, batch_stats


def _embeddings(outputs):
  """The first view's encoder features, twice: DINO trains no projection head (its head's
  outputs are distributions over K prototypes), so the diagnostics read the features."""
  return outputs["features"], outputs["features"]


def teacher_temperature(step, *, warmup_teacher_temp: float = 0.04, teacher_temp: float = 0.07,
                        warmup_steps: int = 0):
  """`warmup + (final - warmup) min(t / warmup_steps, 1)` (`final` at once if warmup_steps=0)."""
  if warmup_steps == 0:
    return jnp.asarray(teacher_temp, jnp.float32)
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
  return warmup_teacher_temp + (teacher_temp - warmup_teacher_temp) * frac


def dino_loss(student: Sequence[jax.Array], teacher: Sequence[jax.Array], center: jax.Array, *,
              student_temp: float = 0.1, teacher_temp=0.07,
              axis_name: Optional[str] = None) -> jax.Array:
  """DINO's cross-entropy (module docstring) of student outputs (one `[b, K]` per view, the
  global crops first) against centred, sharpened teacher outputs of the global crops (one
  `[b, K]` each, no gradient), skipping each global crop against itself; a mean over the
  global batch (psum over `axis_name`) and over the pairs."""
  student, teacher = tuple(student), tuple(teacher)
  if not teacher or len(student) < 2 or len(teacher) > len(student):
    raise ValueError(f"need 1 <= len(teacher) <= len(student) and len(student) >= 2, got "
                     f"{len(teacher)} teacher and {len(student)} student views")
  for name, outs in (("student", student), ("teacher", teacher)):
    for v, x in enumerate(outs):
      _checks.rank(f"{name}[{v}]", x, 2)
      if x.shape != student[0].shape:
        raise ValueError(f"{name}[{v}] has shape {x.shape}, student[0] has "
                         f"{student[0].shape}; every view needs the same [b, K]")
  log_p = [jax.nn.log_softmax(s / student_temp, axis=-1) for s in student]
  total, terms = jnp.asarray(0.0), 0  # a weak-typed zero: the dtype stays the outputs'
  for g, t in enumerate(teacher):
    q = jax.lax.stop_gradient(jax.nn.softmax((t - center) / teacher_temp, axis=-1))
    for v in range(len(student)):
      if v != g:
        total, terms = total - jnp.sum(q * log_p[v]), terms + 1
  b = student[0].shape[0]
  big_b = b * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  return total / (terms * big_b)


def _loss(temps, outputs, extra, *, axis_name, step):
  student, teacher = outputs["student"], outputs["teacher"]
  temp = teacher_temperature(step, warmup_teacher_temp=temps["warmup_teacher_temp"],
                             teacher_temp=temps["teacher_temp"],
                             warmup_steps=temps["warmup_steps"])
  loss = dino_loss(student, teacher, extra["center"], student_temp=temps["student_temp"],
                   teacher_temp=temp, axis_name=axis_name)
  return loss, {"loss": loss, "teacher_temperature": temp}


def update_center(center: jax.Array, teacher: Sequence[jax.Array], momentum: float = 0.9, *,
                  axis_name: Optional[str] = None) -> jax.Array:
  """`m c + (1 - m) mean of the teacher outputs over the global batch and the global crops`."""
  stacked = jnp.concatenate(tuple(teacher))
  total = jnp.sum(stacked, axis=0)
  count = stacked.shape[0]
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
    count = count * jax.lax.axis_size(axis_name)
  return momentum * center + (1.0 - momentum) * total / count


def _update_extra(center_momentum, teacher_momentum, total_steps, extra, params, outputs, *,
                  axis_name, step):
  teacher = outputs["teacher"]
  momentum = _ema.cosine_momentum(step, total_steps, teacher_momentum)
  return {"teacher": _ema.update(extra["teacher"], params, momentum),
          "center": update_center(extra["center"], teacher, center_momentum,
                                  axis_name=axis_name)}
