"""Sharding is exact: every loss and three training steps on 8 devices equal one device.

The reference is the same function without `axis_name` on the concatenated global batch
(one device holds everything, no collective runs), which the loss tests of each module check
against float64 oracles. Here, under `jax.shard_map` over 8 virtual CPU devices, each
device holds 1/8 of the batch, scores its local rows against all-gathered columns and
differentiates the global mean; values and gradients must agree to 1e-5 relative. The
cases are compiled in a few groups (one program each); the OT catalogue, every loss of
`objectives.PRESETS` as the training loop builds it, the MLP and the data × model mesh are slow
tests (`pytest -m slow`).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from contrax import augment, models, objectives, parallel, train, weights
from contrax.losses import alpha_cl, barlow, curl
from contrax.losses.infonce import infonce, ntxent, supervised_infonce
from oracles import on_views
from contrax.methods import contrastive

DATA = parallel.DATA_AXIS
N_DEV = 8
B, D = 16, 8  # global batch (2 images per device), embedding width
RTOL = 1e-5
# Tests compare programs, not speed: skip XLA's slow backend optimisations (halves compile time).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def assert_close(actual, expected, what):
  """Relative error <= 1e-5 per entry, or relative to the tensor's largest entry
  (`|a - e| <= 1e-5 (|e| + max|e|)`-style, as `assert_allclose` with `atol = 1e-5 max|e|`)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  scale = np.max(np.abs(expected)) if expected.size else 0.0
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale + 1e-12,
                             err_msg=what)


def unstack_rows(x: jax.Array, n: int) -> np.ndarray:
  """Device-major stacked rows `[z1_d; z2_d]_d` (shard_map output) to `[z1; z2]` order."""
  x = np.asarray(x)
  b = x.shape[0] // (2 * n)
  return x.reshape(n, 2, b, *x.shape[1:]).swapaxes(0, 1).reshape(x.shape)


class Case(NamedTuple):
  """`fn(*args, axis_name) -> (scalar loss, aux)`; `sharded[i]`: arg i split over the batch;
  `diff`: argnums differentiated; `aux`: None, 'stacked' ([2b, ...] anchor rows), 'rows'
  (plain sharded rows) or 'replicated'."""
  fn: Callable
  args: tuple
  sharded: tuple
  diff: tuple
  aux: Optional[str] = None


def views(seed=0, b=B, d=D):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((b, d)).astype(np.float32),
          rng.standard_normal((b, d)).astype(np.float32))


def pair_case(loss, aux=None) -> Case:
  """A loss of two views; `loss(z1, z2, axis_name) -> scalar or (scalar, [2b, 2B] weights)`."""
  def fn(z1, z2, axis_name):
    out = loss(z1, z2, axis_name)
    return out if isinstance(out, tuple) else (out, jnp.zeros(()))
  return Case(fn, views(), (True, True), (0, 1), aux)


def weighted(weight_fn, **infonce_kwargs):
  """InfoNCE with the weights of `weight_fn(z1, z2, axis_name)`, returned as aux."""
  def loss(z1, z2, axis_name):
    w = weight_fn(z1, z2, axis_name)
    return infonce(z1, z2, weights=w, axis_name=axis_name, **infonce_kwargs), w
  return pair_case(loss, aux="stacked")


def surrogate(alpha_fn):
  """The α-CL surrogate with the constant importances of `alpha_fn(z1, z2, axis_name)`, as aux."""
  def loss(z1, z2, axis_name):
    alpha = jax.lax.stop_gradient(alpha_fn(z1, z2, axis_name))
    return alpha_cl.alpha_surrogate(z1, z2, alpha, axis_name=axis_name), alpha
  return pair_case(loss, aux="stacked")


def supervised_case():
  labels = np.random.default_rng(1).integers(0, 4, B).astype(np.int32)
  fn = lambda z1, z2, y, axis_name: (supervised_infonce(
      z1, z2, y, temperature=0.3, axis_name=axis_name), jnp.zeros(()))
  return Case(fn, views() + (labels,), (True, True, True), (0, 1))


def queue_case():
  queue = np.random.default_rng(2).standard_normal((6, D)).astype(np.float32)
  fn = lambda z1, z2, q, axis_name: (infonce(
      z1, z2, temperature=0.4, tau_plus=0.05, queue=q, axis_name=axis_name), jnp.zeros(()))
  return Case(fn, views() + (queue,), (True, True, False), (0, 1))


def barlow_case():
  fn = lambda z1, z2, axis_name: (
      barlow.barlow_twins(z1, z2, lambda_=0.05, axis_name=axis_name),
      barlow.cross_correlation(z1, z2, eps=1e-5, axis_name=axis_name))
  return Case(fn, views(), (True, True), (0, 1), "replicated")


def curl_case(loss, block=False):
  rng = np.random.default_rng(3)
  k, m, d = 3, B, D
  fx = rng.standard_normal((m, d)).astype(np.float32)
  if block:
    pos = rng.standard_normal((m, 2, d)).astype(np.float32)
    neg = rng.standard_normal((m, k, 2, d)).astype(np.float32)
  else:
    pos = rng.standard_normal((m, d)).astype(np.float32)
    neg = rng.standard_normal((m, k, d)).astype(np.float32)
  fn = lambda a, p, n, axis_name: (curl.curl_loss(a, p, n, loss=loss, axis_name=axis_name),
                                   jnp.zeros(()))
  return Case(fn, (fx, pos, neg), (True, True, True), (0, 1, 2))


def mean_classifier_case():
  rng = np.random.default_rng(4)
  features = rng.standard_normal((B, D)).astype(np.float32)
  labels = rng.integers(0, 5, B).astype(np.int32)
  probe = rng.standard_normal((5, D)).astype(np.float32)

  def fn(f, y, axis_name):
    mu = curl.mean_classifier(f, y, 5, axis_name=axis_name)
    return jnp.sum(mu * probe), mu
  return Case(fn, (features, labels), (True, True), (0,), "replicated")


def multiway_case(loss):
  rng = np.random.default_rng(5)
  features = rng.standard_normal((B, D)).astype(np.float32)
  labels = rng.integers(0, 5, B).astype(np.int32)
  mu = rng.standard_normal((5, D)).astype(np.float32)
  tasks = np.array([[0, 1, 2], [1, 3, 4]], np.int32)
  fn = lambda f, y, m, axis_name: (curl.supervised_multiway_loss(
      f, y, tasks, m, loss=loss, axis_name=axis_name), jnp.zeros(()))
  return Case(fn, (features, labels, mu), (True, True, False), (0, 2))


def ot(**kwargs):
  return lambda z1, z2, ax: on_views(weights.ot)(z1, z2, axis_name=ax, **kwargs)


CASES = {
    # InfoNCE family
    "ntxent": pair_case(lambda z1, z2, ax: ntxent(z1, z2, temperature=0.5, axis_name=ax)),
    "debiased": pair_case(lambda z1, z2, ax: infonce(z1, z2, temperature=0.5,
                                                             tau_plus=0.1, axis_name=ax)),
    "decoupled": pair_case(lambda z1, z2, ax: infonce(z1, z2, temperature=0.2,
                                                              decoupled=True, axis_name=ax)),
    "supervised": supervised_case(),
    "queue": queue_case(),
    "tiled_ring": pair_case(lambda z1, z2, ax: infonce(
        z1, z2, temperature=0.5, tau_plus=0.1, implementation="tiled", tile_size=3,
        axis_name=ax)),
    # negative weightings, each used by InfoNCE with gradients through the weights
    "uniform_weights": weighted(lambda z1, z2, ax: on_views(weights.uniform)(z1, z2, axis_name=ax)),
    "hcl": weighted(lambda z1, z2, ax: on_views(weights.hcl)(z1, z2, beta=1.0, temperature=0.5,
                                                     axis_name=ax), tau_plus=0.1),
    "alpha_direct": weighted(lambda z1, z2, ax: on_views(weights.alpha_direct)(
        z1, z2, p=4.0, temperature=0.5, axis_name=ax)),
    "ot_balanced_stop": weighted(ot(epsilon=0.5, num_iterations=20), tau_plus=0.05),
    "ot_balanced_unroll": weighted(ot(epsilon=0.5, num_iterations=20, gradient="unroll")),
    "ot_semi_relaxed": weighted(ot(epsilon=0.5, marginals="semi_relaxed", gradient="unroll")),
    "ot_unbalanced": weighted(ot(epsilon=0.5, marginals="unbalanced", tau=0.8,
                                 num_iterations=20)),
    "ot_quadratic": weighted(lambda z1, z2, ax: on_views(weights.quadratic_ot)(
        z1, z2, gamma=0.5, num_iterations=20, axis_name=ax)),
    # α-CL
    "phi_psi_infonce": pair_case(lambda z1, z2, ax: alpha_cl.phi_psi_loss(
        z1, z2, alpha_cl.infonce_family(0.5), axis_name=ax)),
    "phi_psi_triplet": pair_case(lambda z1, z2, ax: alpha_cl.phi_psi_loss(
        z1, z2, alpha_cl.triplet_family(0.5), axis_name=ax)),
    "surrogate_phi_psi": surrogate(lambda z1, z2, ax: alpha_cl.alpha_from_phi_psi(
        z1, z2, alpha_cl.lifted_family(0.5), axis_name=ax)),
    "surrogate_infonce_alpha": surrogate(lambda z1, z2, ax: alpha_cl.infonce_alpha(
        z1, z2, temperature=0.5, axis_name=ax)),
    "surrogate_entropy": surrogate(lambda z1, z2, ax: on_views(weights.hcl)(
        z1, z2, temperature=0.5, axis_name=ax)),
    "surrogate_sparsemax": surrogate(lambda z1, z2, ax: on_views(weights.sparsemax)(
        z1, z2, temperature=0.5, axis_name=ax)),
    "surrogate_inverse_power": surrogate(lambda z1, z2, ax: on_views(weights.inverse_power)(
        z1, z2, power=2.0, axis_name=ax)),
    "alpha_cl_direct": pair_case(lambda z1, z2, ax: alpha_cl.alpha_cl_direct(
        z1, z2, p=4.0, eps_alpha=0.1, axis_name=ax)),
    # Barlow Twins
    "barlow_twins": barlow_case(),
    # CURL
    "curl_logistic": curl_case("logistic"),
    "curl_hinge": curl_case("hinge"),
    "curl_block": curl_case("logistic", block=True),
    "mean_classifier": mean_classifier_case(),
    "multiway_logistic": multiway_case("logistic"),
    "multiway_hinge": multiway_case("hinge"),
}


def train_loss_case(name: str) -> Case:
  """The loss `objectives.make` builds for preset `name` with the default hyper-parameters."""
  config = objectives.apply_preset(train.default_config(), name)
  loss = objectives.make(config)
  return pair_case(lambda z1, z2, ax: loss(z1, z2, axis_name=ax))


# Every preset the training loop offers, as it builds them (new entries are covered by name).
CASES.update({f"train:{name}": train_loss_case(name) for name in objectives.PRESETS})

# Cases compiled together: one program per group (sharded, and single-device) keeps the
# compile time down. test_ot.py checks the default OT weighting under shard_map on every run;
# the full OT catalogue here is slow (`pytest -m slow`).
GROUPS = {
    "infonce": ("ntxent", "debiased", "decoupled", "supervised", "queue", "tiled_ring",
                "uniform_weights", "hcl", "alpha_direct"),
    "ot": ("ot_balanced_stop", "ot_balanced_unroll", "ot_semi_relaxed", "ot_unbalanced",
           "ot_quadratic"),
    "alpha_cl": ("phi_psi_infonce", "phi_psi_triplet", "surrogate_phi_psi",
                 "surrogate_infonce_alpha", "surrogate_entropy", "surrogate_sparsemax",
                 "surrogate_inverse_power", "alpha_cl_direct"),
    "barlow_curl": ("barlow_twins", "curl_logistic", "curl_hinge", "curl_block",
                    "mean_classifier", "multiway_logistic", "multiway_hinge"),
}
GROUPS["train"] = tuple(f"train:{name}" for name in objectives.PRESETS)
SLOW_GROUPS = ("ot", "train")


@functools.lru_cache(maxsize=None)
def mesh8() -> Mesh:
  return parallel.make_mesh(N_DEV)


def _value_and_grads(case: Case, args, axis_name):
  (loss, aux), grads = jax.value_and_grad(lambda *a: case.fn(*a, axis_name=axis_name),
                                          argnums=case.diff, has_aux=True)(*args)
  return loss, aux, grads


def sharded_run(cases, mesh: Mesh):
  """(loss, aux, grads) of each case under shard_map on `mesh`, in one jitted program."""
  specs = [tuple(P(DATA) if s else P() for s in c.sharded) for c in cases]
  out_specs = [(P(), P() if c.aux in (None, "replicated") else P(DATA),
                tuple(spec[i] for i in c.diff)) for c, spec in zip(cases, specs)]
  local = lambda all_args: [_value_and_grads(c, a, DATA) for c, a in zip(cases, all_args)]
  step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(specs,), out_specs=out_specs),
                 compiler_options=FAST_COMPILE)
  args = [tuple(jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(c.args, spec))
          for c, spec in zip(cases, specs)]
  results = []
  for c, (loss, aux, grads) in zip(cases, step(args)):
    results.append((loss, unstack_rows(aux, mesh.shape[DATA]) if c.aux == "stacked" else aux,
                    grads))
  return results


def single_run(cases):
  """(loss, aux, grads) of each case on the whole batch without axis_name, one program."""
  return jax.jit(lambda all_args: [_value_and_grads(c, a, None) for c, a in zip(cases, all_args)],
                 compiler_options=FAST_COMPILE)([c.args for c in cases])


def check_case(name, result, reference) -> None:
  case = CASES[name]
  (loss, aux, grads), (ref_loss, ref_aux, ref_grads) = result, reference
  assert np.isfinite(float(ref_loss)), f"{name}: reference loss {ref_loss}"
  assert_close(loss, ref_loss, f"{name}: loss")
  if case.aux is not None:
    assert_close(aux, ref_aux, f"{name}: aux")
  for i, g, ref in zip(case.diff, grads, ref_grads):
    assert np.max(np.abs(np.asarray(ref))) > 0, f"{name}: zero reference gradient of arg {i}"
    assert_close(g, ref, f"{name}: gradient of arg {i}")


def test_every_case_is_in_a_group():
  assert sorted(n for names in GROUPS.values() for n in names) == sorted(CASES)


@pytest.mark.parametrize("group", [pytest.param(g, marks=pytest.mark.slow) if g in SLOW_GROUPS
                                   else g for g in GROUPS])
def test_sharded_losses_and_gradients_equal_single_device(group):
  """Every loss of the library: value, gradients and (where it has one) its weight matrix."""
  cases = [CASES[name] for name in GROUPS[group]]
  failures = []
  for name, result, reference in zip(GROUPS[group], sharded_run(cases, mesh8()),
                                     single_run(cases)):
    try:
      check_case(name, result, reference)
    except AssertionError as e:
      failures.append(str(e))
  assert not failures, "\n".join(failures)


def test_local_columns_only_would_differ():
  """The check can fail: scoring each device's rows against its *local* columns only (no
  all-gather) changes NT-Xent, so the equality above is not vacuous."""
  z1, z2 = views()
  local_only = jax.jit(jax.shard_map(lambda a, b: ntxent(a, b)[None], mesh=mesh8(),
                                     in_specs=(P(DATA), P(DATA)), out_specs=P(DATA)))
  ref = float(jax.jit(ntxent)(z1, z2))
  assert abs(float(np.mean(local_only(z1, z2))) - ref) > 1e-2


# ----------------------------------------------------------------------------- meshes


def test_make_mesh_shapes():
  assert parallel.check_mesh(parallel.make_mesh()).shape == {DATA: N_DEV}
  assert parallel.make_mesh(1).shape == {DATA: 1}
  mesh = parallel.make_mesh(8, model_axis_size=2)
  assert mesh.shape == {DATA: 4, parallel.MODEL_AXIS: 2}
  assert parallel.data_axis_size(mesh) == 4
  assert parallel.check_mesh(mesh) is mesh


def test_make_mesh_axis_types_are_explicitly_auto():
  """Auto axes: a sharded function takes unplaced inputs (resharded to its in_specs); on
  jax.make_mesh's default Explicit axes the same call is an error."""
  auto = jax.sharding.AxisType.Auto
  assert parallel.make_mesh().axis_types == (auto,)
  assert parallel.make_mesh(8, model_axis_size=2).axis_types == (auto, auto)
  z1, z2 = views()
  ref = float(jax.jit(ntxent)(z1, z2))
  for mesh in (parallel.make_mesh(N_DEV), jax.make_mesh((N_DEV,), (DATA,))):
    fn = jax.jit(jax.shard_map(lambda a, b: ntxent(a, b, axis_name=DATA), mesh=mesh,
                               in_specs=(P(DATA), P(DATA)), out_specs=P()))
    if mesh.axis_types == (auto,):
      np.testing.assert_allclose(float(fn(z1, z2)), ref, rtol=1e-5)
    else:
      with pytest.raises(ValueError, match="does not match the specs of the input"):
        fn(z1, z2)


def test_deprecation_warnings_from_jax_and_contrax_are_errors_in_the_suite():
  """pyproject.toml's filterwarnings: a DeprecationWarning attributed to jax, contrax or a test
  module fails; another package's (here attributed to 'jaxopt', which `jax.*` would match)
  does not."""
  import warnings
  with pytest.raises(DeprecationWarning):
    warnings.warn("probe", DeprecationWarning)  # attributed to this test module
  with pytest.raises(DeprecationWarning):
    warnings.warn_explicit("probe", DeprecationWarning, "jax/_src/x.py", 1, module="jax._src.x")
  with warnings.catch_warnings(record=True):
    warnings.warn_explicit("probe", DeprecationWarning, "jaxopt/x.py", 1, module="jaxopt")


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_devices=9), r"num_devices must be an integer in \[1, 8\].*got 9"),
    (dict(num_devices=0), r"num_devices must be an integer in \[1, 8\].*got 0"),
    (dict(num_devices=2.0), "num_devices must be an integer"),
    (dict(num_devices=8, model_axis_size=3), "model_axis_size 3 must divide num_devices 8"),
    (dict(num_devices=8, model_axis_size=0), "model_axis_size must be an integer >= 1"),
])
def test_make_mesh_errors(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    parallel.make_mesh(**kwargs)


def test_check_mesh_errors():
  with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
    parallel.check_mesh(jax.devices())
  with pytest.raises(ValueError, match="mesh must have a 'data' axis, got axes \\('batch',\\)"):
    parallel.check_mesh(Mesh(np.asarray(jax.devices()), ("batch",)))


@pytest.mark.parametrize("batch,match", [
    (12, "batch_size 12 is not divisible by the 8 devices of the 'data' mesh axis"),
    (4, "batch_size 4 is not divisible"),
    (0, "batch_size must be a positive integer, got 0")])
def test_bad_global_batch_is_an_error(batch, match):
  with pytest.raises(ValueError, match=match):
    parallel.check_global_batch(batch, mesh8())


def test_shard_host_batch_places_rows_in_order():
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  arr = parallel.shard_host_batch({"x": x}, mesh8())["x"]
  assert arr.sharding.spec == P(DATA)
  np.testing.assert_array_equal(np.asarray(arr), x)
  for shard in arr.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), x[shard.index])
  with pytest.raises(ValueError, match="divisible by its 8 devices.*got shape \\(12, 3\\)"):
    parallel.shard_host_batch(x[:12], mesh8())


def test_initialize_distributed_argument_errors():
  """Bad flags fail before JAX is touched (the backend is already up in this process)."""
  with pytest.raises(ValueError, match="missing: num_processes, process_id"):
    parallel.initialize_distributed("localhost:1234")
  with pytest.raises(ValueError, match="coordinator_address must be 'host:port'.*'localhost'"):
    parallel.initialize_distributed("localhost", num_processes=2, process_id=0)
  with pytest.raises(ValueError, match=r"process_id must be an integer in \[0, num_processes=2\)"):
    parallel.initialize_distributed("localhost:1234", num_processes=2, process_id=2)
  with pytest.raises(ValueError, match="unknown cpu_collectives 'nccl'"):
    parallel.initialize_distributed("localhost:1234", num_processes=2, process_id=0,
                                    cpu_collectives="nccl")


def test_cli_flag_distributed_joins_before_anything_else(tmp_path):
  """`experiments/pretrain.py --distributed` calls `initialize_distributed()` first: with only
  JAX_COORDINATOR_ADDRESS set it stops with its error, before any run directory exists (the
  full launch is tests/test_multiprocess.py's)."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
  env.update(PYTHONPATH=root, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS="localhost:1234")
  done = subprocess.run(
      [sys.executable, os.path.join(root, "experiments", "pretrain.py"), "--distributed",
       f"--workdir={tmp_path / 'run'}"],
      cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode != 0
  assert "missing: num_processes, process_id" in done.stderr, done.stderr[-2000:]
  assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- training steps


# Per-sample noise keyed by (step, global sample index): the views do not depend on the sharding.
AUGMENTATION = augment.Augmentation(noise_std=0.05)


def tiny_model(name):
  if name == "convnet":
    return models.create("convnet", projection_dim=8, widths=(4, 8), bn_axis_name=DATA)
  return models.create("mlp", projection_dim=8, hidden_sizes=(32,), bn_axis_name=DATA)


def init_state(model, optimizer, image_shape) -> train.TrainState:
  variables = models.init_variables(model, jax.random.key(0), image_shape)
  return train.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                          batch_stats=variables["batch_stats"],
                          opt_state=optimizer.init(variables["params"]))


def run_steps(model, mesh, images):
  """`len(images)` steps of `train.make_train_step` on `mesh`; returns the final state."""
  optimizer = optax.sgd(0.5, momentum=0.9)
  loss_fn = functools.partial(infonce, temperature=0.5, tau_plus=0.1)
  state = jax.device_put(init_state(model, optimizer, images.shape[2:]),
                         parallel.replicated(mesh))
  step = train.make_train_step(contrastive.method(model, loss_fn, AUGMENTATION), optimizer, mesh,
                               seed=3)
  batches = [parallel.shard_host_batch(batch, mesh) for batch in images]
  step = step.lower(state, batches[0]).compile(compiler_options=FAST_COMPILE)
  for batch in batches:
    state, metrics = step(state, batch)
    assert bool(metrics["finite"])
  return state


@functools.lru_cache(maxsize=None)
def single_device_run(model_name: str):
  return run_steps(tiny_model(model_name), parallel.make_mesh(1), step_images())


def assert_same_state(state, reference, what) -> None:
  for field in ("params", "batch_stats", "opt_state"):
    leaves, ref_leaves = (jax.tree.leaves(getattr(s, field)) for s in (state, reference))
    assert len(leaves) == len(ref_leaves)
    for a, b in zip(leaves, ref_leaves):
      assert_close(a, b, f"{what}: {field}")


def step_images(steps=3, batch=B, shape=(8, 8, 1)):
  return np.random.default_rng(7).integers(0, 256, (steps, batch) + shape, dtype=np.uint8)


@pytest.mark.parametrize("model_name", ["convnet", pytest.param("mlp", marks=pytest.mark.slow)])
def test_three_steps_on_eight_devices_equal_one_device(model_name):
  """ConvNet: cross-replica BatchNorm (bn_axis_name='data', as train.pretrain builds it)."""
  model, images = tiny_model(model_name), step_images()
  sharded = run_steps(model, parallel.make_mesh(N_DEV), images)
  single = single_device_run(model_name)
  assert int(sharded.step) == int(single.step) == len(images)
  initial = init_state(model, optax.sgd(0.5), images.shape[2:])
  moved = [np.max(np.abs(np.asarray(a) - np.asarray(b)))
           for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(initial.params))]
  assert min(moved) > 1e-4  # every parameter array moved
  assert_same_state(sharded, single, f"{model_name} on 8 devices")
  if model_name == "convnet":
    assert jax.tree.leaves(single.batch_stats)


def test_per_device_batchnorm_is_refused():
  """Without cross-replica BN (no axis name) each device's batch statistics differ; the step
  refuses (while tracing) to return them as replicated state rather than silently diverge."""
  local_bn = models.create("convnet", projection_dim=8, widths=(4, 8), bn_axis_name=None)
  with pytest.raises(ValueError, match="replicat"):
    run_steps(local_bn, parallel.make_mesh(N_DEV), step_images()[:1])


def test_train_step_refuses_a_mesh_without_data_axis():
  mesh = Mesh(np.asarray(jax.devices()), ("batch",))
  with pytest.raises(ValueError, match="mesh must have a 'data' axis"):
    train.make_train_step(contrastive.method(tiny_model("mlp"), ntxent, AUGMENTATION),
                          optax.sgd(0.1), mesh, seed=0)


@pytest.mark.slow
def test_steps_on_a_data_model_mesh_equal_one_device():
  """A 2-D ('data', 'model') mesh: batch over 4 data devices, replicated over 2 model ones."""
  two_d = run_steps(tiny_model("mlp"), parallel.make_mesh(N_DEV, model_axis_size=2),
                    step_images())
  assert_same_state(two_d, single_device_run("mlp"), "data x model mesh")
