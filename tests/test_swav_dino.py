"""SwAV and DINO (contrax.methods.swav, contrax.methods.dino) against float64 NumPy oracles
written from the papers' formulas, closed forms and finite differences; one step on 8 virtual
devices against the 1-device step on the same global batch."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from contrax import methods, models, parallel, train
from contrax.methods import dino, swav


# ----------------------------------------------------------------------------- oracles
def np_log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_sinkhorn(scores, eps, iterations):
  """SwAV's distributed_sinkhorn (Caron et al. 2020, Algorithm / main_swav.py) in float64:
  Q = exp(S / eps)^T / total; n times: rows (prototypes) to 1/K, columns (samples) to 1/B;
  then B Q, returned as [B, K]."""
  q = np.exp(np.asarray(scores, np.float64) / eps).T
  q /= q.sum()
  k, b = q.shape
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


def np_swav_prediction(scores, codes, temperature):
  """1/G sum_g 1/(V-1) sum_{v != g} mean_i -sum_k q^g_ik log softmax(s^v_i / tau)_k."""
  total = 0.0
  for g, q in enumerate(codes):
    sub = sum(-np.mean(np.sum(q * np_log_softmax(np.asarray(s, np.float64) / temperature), 1))
              for v, s in enumerate(scores) if v != g)
    total += sub / (len(scores) - 1)
  return total / len(codes)


def np_swav_loss(scores, num_global, temperature, eps, iterations):
  codes = [np_sinkhorn(scores[g], eps, iterations) for g in range(num_global)]
  return np_swav_prediction(scores, codes, temperature)


def np_dino_loss(student, teacher, center, student_temp, teacher_temp):
  """Mean over (global crop g, view v != g) of mean_i -sum_k P_t log P_s, with
  P_t = softmax((t - c) / tau_t), P_s = softmax(s / tau_s) (Caron et al. 2021, Algorithm 1)."""
  total, terms = 0.0, 0
  for g, t in enumerate(teacher):
    q = np_softmax((np.asarray(t, np.float64) - center) / teacher_temp)
    for v, s in enumerate(student):
      if v != g:
        total += -np.mean(np.sum(q * np_log_softmax(np.asarray(s, np.float64) / student_temp), 1))
        terms += 1
  return total / terms


def finite_difference_grad(f, xs, h=1e-6):
  """Central differences of scalar f(list of float64 arrays) with respect to every entry."""
  grads = []
  for j, x in enumerate(xs):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      plus = [y.copy() for y in xs]
      minus = [y.copy() for y in xs]
      plus[j][idx] += h
      minus[j][idx] -= h
      g[idx] = (f(plus) - f(minus)) / (2 * h)
    grads.append(g)
  return grads


def _scores(views=4, b=6, k=5, seed=0):
  rng = np.random.default_rng(seed)
  return [np.tanh(rng.normal(size=(b, k))) for _ in range(views)]   # cosines in (-1, 1)


# ----------------------------------------------------------------------------- Sinkhorn
def test_sinkhorn_matches_swav_algorithm_float64():
  scores = _scores(1, b=7, k=5)[0]
  with jax.enable_x64(True):
    for iterations, eps in ((3, 0.05), (1, 0.5), (10, 0.1)):
      q = swav.sinkhorn(jnp.asarray(scores), epsilon=eps, num_iterations=iterations)
      np.testing.assert_allclose(q, np_sinkhorn(scores, eps, iterations), rtol=1e-10)
  q32 = swav.sinkhorn(jnp.asarray(scores, jnp.float32))
  np.testing.assert_allclose(q32, np_sinkhorn(scores, 0.05, 3), rtol=1e-5, atol=1e-6)


def test_sinkhorn_closed_forms():
  """Uniform scores (or scores constant along each row) are the fixed point: every code is
  1/K. After the iterations each sample's code sums to 1 (the algorithm ends on the sample
  normalisation); each prototype's column sums to B/K in the limit."""
  b, k = 6, 4
  for scores in (np.zeros((b, k)), np.repeat(np.linspace(-1, 1, b)[:, None], k, axis=1)):
    np.testing.assert_allclose(swav.sinkhorn(jnp.asarray(scores, jnp.float32)), 1 / k,
                               rtol=1e-6)
  scores = jnp.asarray(_scores(1, b=b, k=k)[0], jnp.float32)
  q = np.asarray(swav.sinkhorn(scores, epsilon=0.05, num_iterations=3), np.float64)
  np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-6)
  q = np.asarray(swav.sinkhorn(scores, epsilon=0.5, num_iterations=200), np.float64)
  np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(q.sum(axis=0), b / k, rtol=1e-5)


def test_sinkhorn_on_8_devices_equals_one_device():
  """Codes over the global batch: each device's rows of the 8-device result equal the
  single-device codes of the whole batch (K-sized all-reduces), and differ from codes of
  the device's rows alone."""
  scores = jnp.asarray(_scores(1, b=16, k=6, seed=3)[0], jnp.float32)
  mesh = parallel.make_mesh(8)
  sharded = jax.jit(jax.shard_map(lambda s: swav.sinkhorn(s, axis_name=parallel.DATA_AXIS),
                                  mesh=mesh, in_specs=P(parallel.DATA_AXIS),
                                  out_specs=P(parallel.DATA_AXIS)))
  expected = swav.sinkhorn(scores)
  np.testing.assert_allclose(sharded(scores), expected, rtol=1e-5, atol=1e-7)
  assert not np.allclose(swav.sinkhorn(scores[:2]), expected[:2], atol=1e-3)


# ----------------------------------------------------------------------------- SwAV loss
def test_swav_loss_matches_oracle_and_finite_differences():
  """Value against the paper's formula; gradient (codes held fixed, as SwAV computes them
  without gradient) against central differences, all in float64."""
  scores = _scores(4, b=5, k=4, seed=1)
  kw = dict(temperature=0.1, eps=0.05, iterations=3)
  with jax.enable_x64(True):
    xs = [jnp.asarray(s) for s in scores]
    fn = lambda xs: swav.swav_loss(xs, num_global=2, temperature=0.1, epsilon=0.05,  # noqa
                                   num_iterations=3)
    value, grads = jax.value_and_grad(fn)(xs)
    np.testing.assert_allclose(value, np_swav_loss(scores, 2, **kw), rtol=1e-10)
  codes = [np_sinkhorn(scores[g], 0.05, 3) for g in range(2)]
  expected = finite_difference_grad(lambda xs: np_swav_prediction(xs, codes, 0.1), scores)
  for g, e in zip(grads, expected):
    np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-8)


def test_swav_loss_errors():
  s = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="at least 2 views"):
    swav.swav_loss([s])
  with pytest.raises(ValueError, match="num_global"):
    swav.swav_loss([s, s], num_global=3)
  with pytest.raises(ValueError, match=r"scores\[1\]"):
    swav.swav_loss([s, jnp.zeros((4, 2))])
  with pytest.raises(ValueError, match="epsilon"):
    swav.sinkhorn(s, epsilon=0.0)


# ----------------------------------------------------------------------------- DINO loss
def test_dino_loss_with_centring_and_sharpening_matches_oracle_and_finite_differences():
  rng = np.random.default_rng(2)
  student = [rng.normal(size=(5, 6)) for _ in range(4)]
  teacher = [rng.normal(size=(5, 6)) for _ in range(2)]
  center = rng.normal(size=6)
  with jax.enable_x64(True):
    fn = lambda s: dino.dino_loss(s, [jnp.asarray(t) for t in teacher], jnp.asarray(center),  # noqa
                                  student_temp=0.1, teacher_temp=0.04)
    value, grads = jax.value_and_grad(fn)([jnp.asarray(s) for s in student])
  np.testing.assert_allclose(value, np_dino_loss(student, teacher, center, 0.1, 0.04),
                             rtol=1e-10)
  expected = finite_difference_grad(
      lambda s: np_dino_loss(s, teacher, center, 0.1, 0.04), student)
  for g, e in zip(grads, expected):
    np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-8)
  # Centring by c shifts every teacher logit: a centre constant over k changes nothing.
  same = dino.dino_loss([jnp.asarray(s, jnp.float32) for s in student],
                        [jnp.asarray(t, jnp.float32) for t in teacher], jnp.full((6,), 3.0))
  np.testing.assert_allclose(same, np_dino_loss(student, teacher, 0.0, 0.1, 0.07), rtol=1e-5)


def test_teacher_temperature_warmup_and_center_update():
  kw = dict(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_steps=100)
  for step, expected in ((0, 0.04), (50, 0.055), (100, 0.07), (1000, 0.07)):
    np.testing.assert_allclose(dino.teacher_temperature(step, **kw), expected, rtol=1e-6)
  np.testing.assert_allclose(dino.teacher_temperature(0, teacher_temp=0.07), 0.07, rtol=1e-6)
  rng = np.random.default_rng(4)
  teacher = [rng.normal(size=(3, 5)).astype(np.float32) for _ in range(2)]
  center = rng.normal(size=5).astype(np.float32)
  new = dino.update_center(jnp.asarray(center), teacher, 0.9)
  np.testing.assert_allclose(new, 0.9 * center + 0.1 * np.concatenate(teacher).mean(0),
                             rtol=1e-5)


def test_dino_head_matches_numpy_forward():
  """MLP (exact GELU) -> L2-normalised bottleneck -> last layer with unit columns."""
  head = dino.DINOHead(out_dim=7, hidden_dim=6, bottleneck_dim=4, num_layers=3)
  x = np.random.default_rng(5).normal(size=(3, 5)).astype(np.float32)
  params = head.init(jax.random.key(0), x)["params"]
  gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
  h = np.asarray(x, np.float64)
  for i in range(3):
    layer = params[f"Dense_{i}"]
    h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
    if i < 2:
      h = gelu(h)
  h /= np.linalg.norm(h, axis=1, keepdims=True)
  v = np.asarray(params["last_layer"], np.float64)
  expected = h @ (v / np.linalg.norm(v, axis=0, keepdims=True))
  np.testing.assert_allclose(head.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the step
def _config(name, **hyper):
  c = train.default_config()
  c.method.name = name
  c.steps = 10
  c.augmentation = "digits"
  for k, v in hyper.items():
    c.method[name][k] = v
  return c


SWAV = dict(num_prototypes=12, num_local_crops=2, local_crop_size=0)
DINO = dict(out_dim=16, hidden_dim=8, bottleneck_dim=4, num_local_crops=2, local_crop_size=6,
            teacher_temp_warmup_steps=4)


def _run_steps(config, model, mesh_size, images):
  method = methods.create(config, model)
  optimizer = optax.sgd(0.01, momentum=0.9)
  mesh = parallel.make_mesh(mesh_size)
  state = train.init_state(method, optimizer, jax.random.key(1), images.shape[2:])
  states = [jax.tree.map(np.asarray, state)]  # the step donates its input state
  state = jax.device_put(state, parallel.replicated(mesh))
  step = train.make_train_step(method, optimizer, mesh, seed=3)
  losses = []
  for batch in images:
    state, metrics = step(state, parallel.shard_host_batch(batch, mesh))
    assert bool(metrics["finite"])
    losses.append(float(metrics["loss"]))
    states.append(jax.tree.map(np.asarray, state))
  return states, losses


def _assert_trees_close(a, b):
  """Leaf by leaf within 1e-5 relative to the leaf's largest entry (elements near 0 of a leaf
  of scale s carry float32 rounding of order 1e-7 s)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 + 1e-5 * np.abs(y).max())


@pytest.mark.slow  # two step compilations: 2 minutes on a loaded 2-core machine
def test_swav_step_on_8_devices_equals_one_device():
  """Two steps of SwAV (MLP with a BatchNorm head, 2 global + 2 local crops): loss, parameters
  (prototypes included) and BN statistics agree on 8 devices and on 1."""
  model = models.create("mlp", projection_dim=6, hidden_sizes=(16,), head_batch_norm=True,
                        bn_axis_name=parallel.DATA_AXIS)
  images = np.random.default_rng(6).integers(0, 256, (2, 16, 8, 8, 1), dtype=np.uint8)
  config = _config("swav", **SWAV)
  (_, _, one), losses1 = _run_steps(config, model, 1, images)
  (_, _, eight), losses8 = _run_steps(config, model, 8, images)
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  assert one.params["prototypes"].shape == (6, 12) and one.extra == {}
  _assert_trees_close(eight.params, one.params)
  _assert_trees_close(eight.batch_stats, one.batch_stats)


@pytest.mark.slow  # two step compilations: 4 minutes on a loaded 2-core machine
def test_dino_step_on_8_devices_equals_one_device():
  """Two steps of DINO (a ConvNet with synchronised BN; 2 global crops of 8 pixels, 2 local of
  6): loss, student, teacher and centre agree on 8 devices and on 1; the teacher is the EMA
  with BYOL's cosine momentum, the centre moved from 0."""
  model = models.create("convnet", projection_dim=4, widths=(4, 8),
                        bn_axis_name=parallel.DATA_AXIS)
  images = np.random.default_rng(7).integers(0, 256, (2, 16, 8, 8, 1), dtype=np.uint8)
  config = _config("dino", **DINO)
  states, losses1 = _run_steps(config, model, 1, images)
  (_, _, eight), losses8 = _run_steps(config, model, 8, images)
  one = states[-1]
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  _assert_trees_close(eight.params, one.params)
  _assert_trees_close(eight.extra["teacher"], one.extra["teacher"])
  np.testing.assert_allclose(eight.extra["center"], one.extra["center"], rtol=1e-5, atol=1e-7)
  assert one.extra["center"].shape == (16,) and np.abs(one.extra["center"]).max() > 0
  assert set(one.params) == {"encoder", "head", "dino_head"}
  # The teacher written out: t_0 = p_0, t_k = m(k-1) t_{k-1} + (1 - m(k-1)) p_k with
  # m(t) = 1 - (1 - 0.996)(cos(pi t / T) + 1) / 2, T = config.steps.
  teacher = states[0].params
  for k in (1, 2):
    m = 1 - (1 - 0.996) * (math.cos(math.pi * (k - 1) / config.steps) + 1) / 2
    teacher = jax.tree.map(lambda t, p: m * t + (1 - m) * p, teacher, states[k].params)
  _assert_trees_close(one.extra["teacher"], teacher)


def test_mlp_encoder_refuses_crops_of_two_sizes():
  """The MLP flattens one image size: local crops at another size name the config fields."""
  model = models.create("mlp", projection_dim=4, hidden_sizes=(8,))
  for name, hyper in (("swav", dict(num_prototypes=4)), ("dino", DINO)):
    method = methods.create(_config(name, **{**hyper, "num_local_crops": 1,
                                             "local_crop_size": 6}), model)
    variables = method.init(jax.random.key(0), (8, 8, 1))
    views = (jnp.zeros((2, 8, 8, 1)),) * 2 + (jnp.zeros((2, 6, 6, 1)),)
    with pytest.raises(ValueError, match=f"method.{name}.global_crop_size / local_crop_size"):
      method.apply(variables, views, method.init_extra(variables["params"]))
