"""Methods with a queue in their extra state: MoCo v2 (momentum encoder + queue of keys) and
NNCLR (support set, nearest-neighbour positives), and their loss, the query-key InfoNCE
(contrax.losses.query_key) with HCL weights over batch + queue negatives.

References: float64 NumPy oracles written from the papers' formulas (He et al. 2020 / Chen et
al. 2020 for MoCo, Dwibedi et al. 2021 for NNCLR, Robinson et al. 2021 for the HCL weights,
Chuang et al. 2020 for tau+), finite differences, a FIFO list for the queue, one step written
out by hand, and the 8-device step against the 1-device step on the same global batch."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from contrax import augment, methods, models, parallel, train
from contrax.losses import query_key_infonce
from contrax.methods import _queue, moco_v2, nnclr
from oracles import fd_grad, rel_err

B, D = 6, 5
AUG = augment.Augmentation(noise_std=0.05)
LR, SEED, GLOBAL_BATCH, QUEUE = 0.3, 5, 16, 40  # 3 steps of 16 keys wrap a queue of 40


def unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def oracle_query_key(q, k, queue=None, batch_negatives=True, t=0.2, beta=0.0, tau_plus=0.0,
                     weights_of=None):
  """Query i: positive k_i; negatives the other keys (batch_negatives) and the queue rows,
  weighted w_ij = softmax_j(beta s_ij / t); Ng debiased with tau+ and clamped at N e^{-1/t}.
  `weights_of=(q0, k0)`: the weights of those embeddings instead (held constant)."""
  def negative_sims(q, k):
    q, k = unit(q), unit(k)
    sims = [[q[i] @ k[j] for j in range(len(k)) if j != i] if batch_negatives else []
            for i in range(len(q))]
    if queue is not None:
      sims = [row + list(unit(queue) @ q[i]) for i, row in enumerate(sims)]
    return np.array(sims)

  all_sims = negative_sims(q, k)
  w = np.exp(beta * negative_sims(*(weights_of or (q, k))) / t)
  w /= w.sum(axis=1, keepdims=True)
  q, k = unit(q), unit(k)
  total = 0.0
  for i in range(len(q)):
    sims, n = all_sims[i], all_sims.shape[1]
    pos = np.exp(q[i] @ k[i] / t)
    neg = n * np.sum(w[i] * np.exp(sims / t))
    if tau_plus > 0:
      neg = max((neg - tau_plus * n * pos) / (1 - tau_plus), n * np.exp(-1 / t))
    total += -np.log(pos / (pos + neg))
  return total / len(q)


def embeddings(seed, b=B, queue_size=7):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, D))
  k = q + 0.7 * rng.normal(size=(b, D))
  return (q.astype(np.float32), k.astype(np.float32),
          rng.normal(size=(queue_size, D)).astype(np.float32))


CASES = {
    "moco_v2": dict(batch_negatives=False, beta=0.0, tau_plus=0.0, queue=True),
    "mocov3_nnclr": dict(batch_negatives=True, beta=0.0, tau_plus=0.0, queue=False),
    "hcl_batch_and_queue": dict(batch_negatives=True, beta=1.5, tau_plus=0.1, queue=True),
    "hcl_queue": dict(batch_negatives=False, beta=2.0, tau_plus=0.0, queue=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_query_key_infonce_value_and_gradients_match_the_oracle(case):
  c = dict(CASES[case])
  q, k, queue = embeddings(0)
  queue = queue if c.pop("queue") else None
  ours = lambda a, b, m: query_key_infonce(a, b, queue=m, temperature=0.2, **c)
  oracle = lambda a, b: oracle_query_key(a, b, queue, t=0.2, **c)
  value, grads = jax.value_and_grad(ours, argnums=(0, 1))(q, k, queue)
  np.testing.assert_allclose(float(value), oracle(q, k), rtol=1e-5)
  assert rel_err(grads, fd_grad(oracle, q, k)) < 1e-4
  if queue is not None:  # the queue is a constant
    np.testing.assert_array_equal(jax.grad(ours, argnums=2)(q, k, queue), 0.0)


def test_detached_hcl_weights_are_constants_of_the_gradient():
  q, k, queue = embeddings(5)
  options = dict(queue=queue, batch_negatives=True, beta=1.5, tau_plus=0.1)
  ours = lambda a, b: query_key_infonce(a, b, stop_gradient_weights=True, **options)
  oracle = lambda a, b: oracle_query_key(a, b, weights_of=(q, k), **options)
  value, grads = jax.value_and_grad(ours, argnums=(0, 1))(q, k)
  np.testing.assert_allclose(float(value), oracle(q, k), rtol=1e-5)
  assert rel_err(grads, fd_grad(oracle, q, k)) < 1e-4


def test_moco_loss_is_cross_entropy_of_the_positive_against_the_queue():
  """MoCo's code: logits [q·k+, q·queue] / t, label 0 (cross-entropy)."""
  q, k, queue = embeddings(1)
  qn, kn, bank = unit(q), unit(k), unit(queue)
  logits = np.concatenate([np.sum(qn * kn, 1, keepdims=True), qn @ bank.T], 1) / 0.2
  ce = np.mean(np.log(np.sum(np.exp(logits), 1)) - logits[:, 0])
  np.testing.assert_allclose(float(query_key_infonce(q, k, queue=queue, batch_negatives=False)),
                             ce, rtol=1e-5)


@pytest.mark.parametrize("case", ["moco_v2", "hcl_batch_and_queue"])
def test_query_key_infonce_on_8_devices_equals_one_device(case):
  c = dict(CASES[case])
  del c["queue"]
  q, k, queue = embeddings(2, b=16)
  mesh = jax.make_mesh((8,), ("data",))
  loss = lambda axis: lambda a, b, m: query_key_infonce(a, b, queue=m, axis_name=axis, **c)
  sharded = jax.shard_map(loss("data"), mesh=mesh, in_specs=(P("data"), P("data"), P()),
                          out_specs=P())
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  v8, g8 = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(
      put(q, P("data")), put(k, P("data")), put(queue, P()))
  v1, g1 = jax.value_and_grad(loss(None), argnums=(0, 1))(q, k, queue)
  np.testing.assert_allclose(float(v8), float(v1), rtol=1e-5)
  assert rel_err(g8, g1) < 1e-5


def test_query_key_infonce_bad_arguments_raise():
  q, k, queue = embeddings(3)
  with pytest.raises(ValueError, match="at least one negative"):
    query_key_infonce(q, k, batch_negatives=False)
  with pytest.raises(ValueError, match="queue must have 5 columns"):
    query_key_infonce(q, k, queue=queue[:, :3])
  with pytest.raises(ValueError, match="beta"):
    query_key_infonce(q, k, beta=-1.0)
  with pytest.raises(ValueError, match="tau_plus"):
    query_key_infonce(q, k, tau_plus=1.0)


# ----------------------------------------------------------------------------- the queue


def test_queue_holds_the_last_rows_in_fifo_order_and_the_pointer_wraps():
  size, batch = 10, 4
  state = _queue.init(jax.random.key(0), size, D)
  expected = list(np.asarray(state["queue"]))  # oldest first: the initial random rows
  np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, rtol=1e-6)
  rng = np.random.default_rng(0)
  for step in range(1, 6):
    rows = rng.normal(size=(batch, D)).astype(np.float32)
    state = _queue.enqueue(state, jnp.asarray(rows))
    expected = (expected + list(unit(rows)))[-size:]
    assert int(state["ptr"]) == step * batch % size
    np.testing.assert_allclose(_queue.in_fifo_order(state), np.array(expected), atol=1e-6)


def test_a_queue_smaller_than_the_batch_is_an_error():
  state = _queue.init(jax.random.key(0), 3, D)
  with pytest.raises(ValueError, match="queue of at least the batch size"):
    _queue.enqueue(state, jnp.ones((4, D)))


# ----------------------------------------------------------------------------- MoCo v2


def mlp():
  return models.create("mlp", projection_dim=8, hidden_sizes=(16,), bn_axis_name="data")


def first_views():
  """The two views of step 0 (key fold_in(key(SEED), 0), sample ids = global row indices);
  jitted, as eager augmentation dispatches hundreds of small operations."""
  two_views = jax.jit(functools.partial(augment.two_views, AUG))
  return two_views(jax.random.fold_in(jax.random.key(SEED), 0), images()[0],
                   jnp.arange(GLOBAL_BATCH))


def images():
  return np.random.default_rng(1).integers(0, 256, (3, GLOBAL_BATCH, 8, 8, 1), np.uint8)


BUILDERS = {"moco_v2": moco_v2.method, "nnclr": nnclr.method}
OPTIONS = {"moco_v2": {"momentum": 0.9}, "nnclr": {"predictor_hidden_dim": 12}}


def build(name, **options):
  return BUILDERS[name](mlp(), AUG, seed=SEED, queue_size=QUEUE, **OPTIONS[name], **options)


@functools.lru_cache(maxsize=None)
def run_steps(name, num_devices, options=()):
  """The states (NumPy leaves) and losses after each of 3 steps of method `name` on
  `images()` (cached: the one-step tests read the first step of the 1-device run)."""
  method = build(name, **dict(options))
  mesh = parallel.make_mesh(num_devices)
  state = train.init_state(method, optax.sgd(LR), jax.random.key(0), (8, 8, 1))
  state = jax.device_put(state, parallel.replicated(mesh))
  step = train.make_train_step(method, optax.sgd(LR), mesh, seed=SEED)
  states, losses = [], []
  for batch in images():
    state, metrics = step(state, parallel.shard_host_batch(batch, mesh))
    assert bool(metrics["finite"])
    states.append(jax.tree.map(np.asarray, state))
    losses.append(float(metrics["loss"]))
  return states, np.array(losses)


def assert_same_states(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_moco_v2_one_step_written_out():
  """Step 0 by hand: q = online(view 1), k = target(view 2) with target = initial params,
  the oracle loss against the initial queue; then SGD, target <- m target + (1-m) params,
  the 16 normalised keys written at the queue's start, pointer 16."""
  momentum = OPTIONS["moco_v2"]["momentum"]
  method = build("moco_v2")
  model = method.model
  state0 = train.init_state(method, optax.sgd(LR), jax.random.key(0), (8, 8, 1))
  params0, queue0 = jax.tree.map(np.asarray, (state0.params, state0.extra["queue"]))
  view1, view2 = first_views()
  project = jax.jit(lambda params, x: model.apply({"params": params, "batch_stats": {}}, x)[1])
  k = project(params0, view2)
  loss, grads = jax.jit(jax.value_and_grad(lambda p: query_key_infonce(
      project(p, view1), k, queue=queue0, batch_negatives=False, temperature=0.2)))(params0)
  np.testing.assert_allclose(float(loss), oracle_query_key(
      project(params0, view1), k, queue0, batch_negatives=False, t=0.2), rtol=1e-5)
  states, losses = run_steps("moco_v2", 1)
  new = states[0]
  np.testing.assert_allclose(losses[0], float(loss), rtol=1e-5)
  params1 = jax.tree.map(lambda p, g: p - LR * g, params0, grads)
  assert_same_states(new.params, params1)
  assert_same_states(new.extra["target"],
                     jax.tree.map(lambda t, p: momentum * t + (1 - momentum) * p, params0, params1))
  np.testing.assert_allclose(new.extra["queue"][:GLOBAL_BATCH], unit(k), atol=1e-6)
  np.testing.assert_array_equal(new.extra["queue"][GLOBAL_BATCH:], queue0[GLOBAL_BATCH:])
  assert int(new.extra["ptr"]) == GLOBAL_BATCH


@pytest.mark.parametrize("options", [
    {},  # MoCo v2
    {"symmetric": True, "batch_negatives": True, "beta": 1.0, "tau_plus": 0.1},
])
def test_moco_v2_on_8_devices_equals_one_device(options):
  """Loss, parameters, momentum encoder, queue and pointer after 3 steps (the queue wraps)."""
  states1, losses1 = run_steps("moco_v2", 1, tuple(sorted(options.items())))
  states8, losses8 = run_steps("moco_v2", 8, tuple(sorted(options.items())))
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  state8 = states8[-1]
  assert_same_states(state8, states1[-1])
  keys_per_step = GLOBAL_BATCH * (2 if options else 1)
  assert int(state8.extra["ptr"]) == 3 * keys_per_step % QUEUE


# ----------------------------------------------------------------------------- NNCLR


def test_nearest_neighbour_is_the_most_similar_support_row():
  support = unit(np.random.default_rng(4).normal(size=(9, D))).astype(np.float32)
  z = 3.0 * support[[2, 0, 7]] + 1e-3
  np.testing.assert_array_equal(nnclr.nearest_neighbours(jnp.asarray(z), jnp.asarray(support)),
                                support[[2, 0, 7]])


def test_nnclr_one_step_written_out():
  """Step 0 by hand: z and p = predictor(z) of both views; NN from the initial support set by
  NumPy argmax; loss (L(NN(z1), p2) + L(NN(z2), p1)) / 2 with the batch's predictions as
  negatives; then z1 (normalised) written at the support set's start."""
  method = build("nnclr")
  model = method.model
  state0 = train.init_state(method, optax.sgd(LR), jax.random.key(0), (8, 8, 1))
  variables = jax.tree.map(np.asarray, state0.variables())
  support = np.asarray(state0.extra["queue"], np.float64)
  views = first_views()
  # The predictor's BatchNorm averages over the data axis: apply it on a mesh of one device.
  apply = jax.jit(jax.shard_map(lambda v, x: method.apply(v, x, state0.extra)[0],
                                mesh=parallel.make_mesh(1), in_specs=P(), out_specs=P()))
  outputs = apply(variables, views)
  z, p = outputs["z"], outputs["p"]
  z1, z2 = np.split(np.asarray(z, np.float64), 2)
  p1, p2 = np.split(np.asarray(p, np.float64), 2)
  nn = lambda x: support[np.argmax(unit(x) @ support.T, axis=1)]
  expected = (oracle_query_key(nn(z1), p2, t=0.1) + oracle_query_key(nn(z2), p1, t=0.1)) / 2
  states, losses = run_steps("nnclr", 1)
  new = states[0]
  np.testing.assert_allclose(losses[0], expected, rtol=1e-5)
  np.testing.assert_allclose(new.extra["queue"][:GLOBAL_BATCH], unit(z1), atol=1e-6)
  np.testing.assert_array_equal(new.extra["queue"][GLOBAL_BATCH:], support[GLOBAL_BATCH:])
  assert int(new.extra["ptr"]) == GLOBAL_BATCH
  # The predictor is trained beside the model and the encoder still evaluates on its own.
  assert "predictor" in new.params and not np.allclose(
      new.params["predictor"]["Dense_0"]["kernel"], variables["params"]["predictor"]["Dense_0"]
      ["kernel"])
  features = jax.jit(lambda v, x: model.apply(v, x, method=models.ContrastiveModel.encode))(
      {"params": new.params, "batch_stats": new.batch_stats}, views[0])
  assert features.shape == (GLOBAL_BATCH, 16)


def test_nnclr_on_8_devices_equals_one_device():
  """Loss, parameters (model and predictor), BatchNorm statistics, support set and pointer."""
  states1, losses1 = run_steps("nnclr", 1)
  states8, losses8 = run_steps("nnclr", 8)
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
  state8 = states8[-1]
  assert_same_states(state8, states1[-1])
  assert int(state8.extra["ptr"]) == 3 * GLOBAL_BATCH % QUEUE


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["moco_v2", "nnclr"])
def test_methods_are_built_from_the_run_config(name):
  config = train.default_config()
  config.method.name = name
  method = methods.create(config, mlp())
  assert method.name == name and method.num_views == 2
  assert name in methods.NAMES


def test_paper_defaults():
  config = methods.default_config()
  assert (config.moco_v2.momentum, config.moco_v2.queue_size, config.moco_v2.temperature,
          config.moco_v2.symmetric) == (0.999, 65536, 0.2, False)
  assert (config.nnclr.queue_size, config.nnclr.temperature,
          config.nnclr.predictor_hidden_dim) == (98304, 0.1, 4096)


@pytest.mark.parametrize("name,field,value", [
    ("moco_v2", "queue_size", 0), ("moco_v2", "momentum", 1.5), ("moco_v2", "temperature", 0.0),
    ("moco_v2", "beta", -1.0), ("moco_v2", "tau_plus", 1.0), ("nnclr", "queue_size", 0),
    ("nnclr", "temperature", -0.1), ("nnclr", "predictor_hidden_dim", 0),
])
def test_bad_fields_are_named(name, field, value):
  config = train.default_config()
  config.method.name = name
  config.method[name][field] = value
  with pytest.raises(ValueError, match=f"method.{name}.{field}"):
    methods.create(config, mlp())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["moco_v2", "nnclr"])
def test_pretrain_trains_and_evaluates_the_method_on_digits(tmp_path, name):
  """The driver of `experiments/pretrain.py --config.method.name=NAME`, a few steps, with the
  queue in the checkpointed state and the encoder evaluated."""
  config = train.default_config()
  config.method.name = name
  config.method[name].queue_size = 256
  config.steps, config.batch_size, config.eval_every, config.progress = 4, 64, 0, False
  config.num_devices = 1  # the 8-device step is tested above; this checks the driver
  summary = train.pretrain(config, str(tmp_path / name))
  assert summary["steps"] == 4 and 0.0 <= summary["knn_accuracy"] <= 1.0
  assert np.isfinite([r["loss"] for r in train.read_metrics(str(tmp_path / name))
                      if "loss" in r]).all()
