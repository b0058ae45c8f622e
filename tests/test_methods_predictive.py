"""BYOL, SimSiam and MoCo v3: their losses (contrax.losses.predictive, query_key_infonce) against
float64 NumPy oracles written from the papers' formulas, closed forms and finite differences;
one training step against a hand-written reference (EMA target included); 8 devices against
one; the methods by name through the config and the CLI."""
from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from contrax import augment, methods, models, parallel, runs, train
from contrax.losses import byol_loss, moco_v3_loss, query_key_infonce, simsiam_loss
from contrax.methods import byol, moco_v3, simsiam
from oracles import fd_grad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_COMPILE = {"xla_backend_optimization_level": 0}

# ----------------------------------------------------------------------------- oracles


def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def byol_oracle(p1, p2, t1, t2):
  """Grill et al. 2020, eq. 2, symmetrised: mean_i ‖p̂1 − t̂2‖² + ‖p̂2 − t̂1‖²."""
  return np.mean(np.sum((unit(p1) - unit(t2)) ** 2, 1) + np.sum((unit(p2) - unit(t1)) ** 2, 1))


def simsiam_oracle(p1, p2, z1, z2):
  """Chen & He 2021, eq. 4: ½ D(p1, z2) + ½ D(p2, z1), D = −cosine, mean over the batch."""
  return np.mean(-0.5 * (np.sum(unit(p1) * unit(z2), 1) + np.sum(unit(p2) * unit(z1), 1)))


def ctr_oracle(q, k, tau):
  """Chen, Xie & He 2021, eq. 1: cross-entropy of softmax_j(q̂_i·k̂_j / τ) with label i."""
  logits = unit(q) @ unit(k).T / tau
  log_softmax = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1,
                                       keepdims=True)) - logits.max(1, keepdims=True)
  return -np.mean(np.diag(log_softmax))


def moco_v3_oracle(q1, q2, k1, k2, tau):
  """The official code's symmetrised loss: 2τ [ctr(q1, k2) + ctr(q2, k1)]."""
  return 2 * tau * (ctr_oracle(q1, k2, tau) + ctr_oracle(q2, k1, tau))


TAU = 0.3
LOSSES = {  # name -> (contrax loss, oracle)
    "byol": (byol_loss, byol_oracle),
    "simsiam": (simsiam_loss, simsiam_oracle),
    "moco_v3": (functools.partial(moco_v3_loss, temperature=TAU),
                functools.partial(moco_v3_oracle, tau=TAU)),
}


def four(seed, b=5, d=3):
  return tuple(np.random.default_rng(seed).standard_normal((4, b, d)))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_and_gradients_equal_the_float64_oracle_and_finite_differences(name):
  loss, oracle = LOSSES[name]
  args = four(0)
  with jax.enable_x64(True):
    value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(*map(jnp.asarray, args))
  np.testing.assert_allclose(value, oracle(*args), rtol=1e-12)
  for g, want in zip(grads, fd_grad(oracle, *args)):
    assert g.dtype == np.float64 and np.max(np.abs(want)) > 1e-3
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-8)


def test_closed_forms():
  """Predictions along their targets: BYOL 0, SimSiam −1; orthonormal queries and keys (q = k
  = I_B): ctr = log(1 + (B − 1) e^{−1/τ}), so MoCo v3 = 4τ log(1 + (B − 1) e^{−1/τ})."""
  z = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
  scaled = 2.5 * z  # the losses read directions only
  np.testing.assert_allclose(byol_loss(z, scaled, scaled, z), 0.0, atol=1e-6)
  np.testing.assert_allclose(simsiam_loss(z, scaled, scaled, z), -1.0, rtol=1e-6)
  eye = np.eye(6, dtype=np.float32)
  want = 4 * TAU * math.log1p(5 * math.exp(-1 / TAU))
  np.testing.assert_allclose(moco_v3_loss(eye, eye, eye, eye, temperature=TAU), want, rtol=1e-6)
  np.testing.assert_allclose(query_key_infonce(eye, eye, temperature=TAU), want / (4 * TAU),
                             rtol=1e-6)


def test_losses_on_eight_devices_equal_one_device():
  """Value and gradients (all four inputs, keys included) under shard_map with the data axis
  equal the single-device loss on the concatenated batch."""
  mesh = parallel.make_mesh(8)
  args = tuple(np.asarray(a, np.float32) for a in four(2, b=16, d=4))
  value_and_grads = lambda loss, axis: jax.value_and_grad(  # noqa: E731
      lambda *a: loss(*a, axis_name=axis), argnums=(0, 1, 2, 3))
  names = sorted(LOSSES)

  def local(*a):
    return [value_and_grads(LOSSES[n][0], parallel.DATA_AXIS)(*a) for n in names]

  sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"),) * 4,
                                  out_specs=[(P(), (P("data"),) * 4)] * len(names)))
  placed = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in args]
  for n, (value, grads) in zip(names, sharded(*placed)):
    ref_value, ref_grads = value_and_grads(LOSSES[n][0], None)(*args)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, err_msg=n)
    for g, ref in zip(grads, ref_grads):
      np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5 * np.max(np.abs(ref)), err_msg=n)


def test_loss_arguments_are_checked():
  z = np.ones((4, 3), np.float32)
  with pytest.raises(ValueError, match=r"p1 and p2 and t1 and t2 must have the same shape"):
    byol_loss(z, z, z, z[:3])
  with pytest.raises(ValueError, match=r"z2 contains NaN or inf at row 0"):
    simsiam_loss(z, z, z, np.full((4, 3), np.nan, np.float32))
  with pytest.raises(ValueError, match=r"temperature must be a finite number > 0, got 0"):
    moco_v3_loss(z, z, z, z, temperature=0)
  with pytest.raises(ValueError, match="at least one negative"):
    query_key_infonce(z[:1], z[:1])


# ----------------------------------------------------------------------------- training steps

AUG = augment.Augmentation(noise_std=0.05)
LR, SEED, STEPS, START, BASE, HIDDEN = 0.3, 5, 10, 3, 0.9, 16


def tiny_model(bn_axis_name):
  return models.create("mlp", projection_dim=8, hidden_sizes=(16,), head_batch_norm=True,
                       bn_axis_name=bn_axis_name)


def build(name, model):
  if name == "byol":
    return byol.method(model, AUG, total_steps=STEPS, base_momentum=BASE, predictor_hidden=HIDDEN)
  if name == "moco_v3":
    return moco_v3.method(model, AUG, total_steps=STEPS, base_momentum=BASE, temperature=TAU,
                          predictor_hidden=HIDDEN)
  return simsiam.method(model, AUG, predictor_hidden=HIDDEN)


def images():
  return np.random.default_rng(1).integers(0, 256, (2, 16, 8, 8, 1), dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def initial_state(name):
  """Step START (so the momentum is off its base value): the method's init, host arrays."""
  method = build(name, tiny_model(parallel.DATA_AXIS))
  state = train.init_state(method, optax.sgd(LR), jax.random.key(0), (8, 8, 1))
  return jax.tree.map(np.asarray, state.replace(step=jnp.asarray(START, jnp.int32)))


def run_steps(name, num_devices):
  """Two steps of `train.make_train_step` on `num_devices`; (state, metrics) after each."""
  method = build(name, tiny_model(parallel.DATA_AXIS))
  mesh = parallel.make_mesh(num_devices)
  # A copy: the step donates its input state, and the cached one is the reference's too.
  state = jax.device_put(jax.tree.map(np.copy, initial_state(name)), parallel.replicated(mesh))
  batches = [parallel.shard_host_batch(x, mesh) for x in images()]
  step = train.make_train_step(method, optax.sgd(LR), mesh, seed=SEED)
  step = step.lower(state, batches[0]).compile(compiler_options=FAST_COMPILE)
  out = []
  for batch in batches:
    state, metrics = step(state, batch)
    assert bool(metrics["finite"])
    out.append(jax.tree.map(np.asarray, (state, metrics)))
  return out


@functools.lru_cache(maxsize=None)
def single_device(name):
  return run_steps(name, 1)


def reference_step(name, state):
  """One step written out from the papers: views with keys fold_in(key(SEED), step) and the
  global sample index; each view through the model (BN with the batch statistics, running
  averages updated by view 1 then view 2) and the predictor; targets from the EMA target in
  training mode (BYOL, MoCo v3) or the online projections (SimSiam) without gradient; the
  loss; SGD; then target <- m target + (1 - m) params with m = 1 - (1 - m0)(cos(pi k/T) + 1)/2."""
  model = tiny_model(None)
  pred = models.ProjectionHead(projection_dim=8, hidden_dim=HIDDEN, batch_norm=True)
  views = augment.two_views(AUG, jax.random.fold_in(jax.random.key(SEED), START), images()[0],
                            jnp.arange(16))
  own = lambda tree: {k: v for k, v in tree.items() if k != "predictor"}  # noqa: E731

  def run(module, params, stats, inputs, project):
    outs = []
    for x in inputs:
      out, new = module.apply({"params": params, "batch_stats": stats}, x, train=True,
                              mutable=["batch_stats"])
      outs.append(out[1] if project else out)
      stats = new["batch_stats"]
    return outs, stats

  def loss_of(params):
    z, model_stats = run(model, own(params), own(state.batch_stats), views, True)
    p, pred_stats = run(pred, params["predictor"], state.batch_stats["predictor"], z, False)
    if name == "simsiam":
      t = [jax.lax.stop_gradient(x) for x in z]
    else:
      t, _ = run(model, state.extra["target"], own(state.batch_stats), views, True)
    n = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    if name == "byol":
      loss = jnp.mean(jnp.sum((n(p[0]) - n(t[1])) ** 2, 1) + jnp.sum((n(p[1]) - n(t[0])) ** 2, 1))
    elif name == "simsiam":
      loss = -0.5 * jnp.mean(jnp.sum(n(p[0]) * n(t[1]), 1) + jnp.sum(n(p[1]) * n(t[0]), 1))
    else:
      ctr = lambda q, k: -jnp.mean(jnp.diag(jax.nn.log_softmax(n(q) @ n(k).T / TAU)))  # noqa
      loss = 2 * TAU * (ctr(p[0], t[1]) + ctr(p[1], t[0]))
    return loss, {**model_stats, "predictor": pred_stats}

  (loss, stats), grads = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(state.params)
  params = jax.tree.map(lambda w, g: w - LR * g, state.params, grads)
  extra = {}
  if name != "simsiam":
    m = 1 - (1 - BASE) * (math.cos(math.pi * START / STEPS) + 1) / 2
    extra = {"target": jax.tree.map(lambda e, w: m * e + (1 - m) * w, state.extra["target"],
                                    own(params))}
  return loss, params, stats, extra


def assert_trees_close(got, want, what, rtol=1e-5):
  got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
  assert jax.tree.structure(got) == jax.tree.structure(want), what
  for a, b in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)) + 1e-7,
                               err_msg=what)


@pytest.mark.parametrize("name", ["byol", "simsiam", "moco_v3"])
def test_one_step_equals_the_reference_written_out(name):
  state = initial_state(name)
  assert set(state.params) == {"encoder", "head", "predictor"}
  if name == "simsiam":
    assert state.extra == {}
  else:  # the target starts as a copy of the online encoder + projector
    assert_trees_close(state.extra["target"], {k: state.params[k] for k in ("encoder", "head")},
                       "initial target", rtol=0)
  loss, params, stats, extra = reference_step(name, state)
  new, metrics = single_device(name)[0]
  assert int(new.step) == START + 1
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  assert_trees_close(new.params, params, f"{name}: params")
  assert_trees_close(new.batch_stats, stats, f"{name}: batch_stats")
  assert_trees_close(new.extra, extra, f"{name}: target")
  moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(new.params),
                                                 jax.tree.leaves(state.params))]
  assert min(moved) > 0  # every parameter, the predictor's included, was trained


@pytest.mark.parametrize("name", ["byol", "simsiam", "moco_v3"])
def test_two_steps_on_eight_devices_equal_one_device(name):
  """Cross-replica BN, global losses and the EMA target: loss, parameters, batch statistics and
  target after each step agree to 1e-5."""
  for k, ((state, metrics), (ref, ref_metrics)) in enumerate(zip(run_steps(name, 8),
                                                                 single_device(name))):
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    for field in ("params", "batch_stats", "extra", "opt_state"):
      assert_trees_close(getattr(state, field), getattr(ref, field), f"{name} step {k}: {field}")


# ----------------------------------------------------------------------------- by name


def test_methods_are_built_by_name_with_paper_defaults_and_checked_hyperparameters():
  config = train.default_config()
  assert {"byol", "simsiam", "moco_v3"} <= set(methods.NAMES)
  assert dict(config.method.byol) == {"base_momentum": 0.996, "predictor_hidden_ratio": 16.0}
  assert dict(config.method.simsiam) == {"predictor_hidden_ratio": 0.25}
  assert dict(config.method.moco_v3) == {"base_momentum": 0.99, "temperature": 0.2,
                                         "predictor_hidden_ratio": 16.0}
  model = train.create_model(config)
  for name in ("byol", "simsiam", "moco_v3"):
    config.method.name = name
    method = methods.create(config, model)
    assert method.name == name and method.num_views == 2
  config.method.name = "byol"
  config.method.byol.base_momentum = 1.5
  with pytest.raises(ValueError, match=r"base_momentum must lie in \[0.0, 1.0\], got 1.5"):
    methods.create(config, model)
  config.method.name = "simsiam"
  config.method.simsiam.predictor_hidden_ratio = 0.0
  with pytest.raises(ValueError, match="predictor_hidden_ratio must be a finite number > 0"):
    methods.create(config, model)
  config.method.name = "moco_v3"
  config.method.moco_v3.temperature = -1.0
  with pytest.raises(ValueError, match="temperature must be a finite number > 0, got -1.0"):
    methods.create(config, model)


def test_every_method_field_has_help():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "pretrain_configs", os.path.join(ROOT, "experiments", "configs", "pretrain.py"))
  configs = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(configs)
  fields = runs.dotted_fields(train.default_config())
  for name in ("byol", "simsiam", "moco_v3"):
    mine = [f for f in fields if f.startswith(f"method.{name}.")]
    assert mine and all(configs.FIELD_HELP.get(f) for f in mine), name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["byol", "moco_v3"])  # SimSiam is BYOL's path without a target
def test_pretrain_cli_runs_each_method(tmp_path, name):
  """`experiments/pretrain.py --config.method.name=NAME` on digits, end to end: training,
  checkpoints, evaluation (the encoder's apply ignores the predictor's parameters)."""
  flags = dict(steps=6, batch_size=32, log_every=3, eval_every=3, checkpoint_every=3,
               progress=False, knn_k=5)
  command = [sys.executable, os.path.join(ROOT, "experiments", "pretrain.py"),
             "--workdir", str(tmp_path / "run"), f"--config.method.name={name}"]
  command += [f"--config.{k}={str(v).lower()}" for k, v in flags.items()]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr[-3000:]
  records = runs.read_metrics(str(tmp_path / "run"))
  assert [r["step"] for r in records if "loss" in r] == [3, 6]
  assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
  final = [r for r in records if "linear_accuracy" in r]
  assert final and final[-1]["knn_accuracy"] > 0.1  # ten classes: above chance
  with open(tmp_path / "run" / "summary.json") as f:
    assert json.load(f)["loss"] == name
