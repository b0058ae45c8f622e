"""The online linear probe and the collapse diagnostics (contrax.monitor) and how the training
step runs them (train.make_train_step with `probe`)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import oracles
from contrax import augment, models, monitor, parallel, train
from contrax.losses.infonce import infonce
from contrax.methods import contrastive

AUG = augment.Augmentation(noise_std=0.05)
LOSS = functools.partial(infonce, temperature=0.5)
LR, PROBE_LR, SEED, CLASSES = 0.3, 0.05, 5, 4
PROBE = monitor.OnlineProbe(num_classes=CLASSES, optimizer=optax.adam(PROBE_LR))


def _shard_mapped(fn, mesh, num_args=1):
  """`fn(*local rows, axis_name='data')` under shard_map, rows sharded, result replicated."""
  return jax.jit(jax.shard_map(functools.partial(fn, axis_name=parallel.DATA_AXIS), mesh=mesh,
                               in_specs=(P(parallel.DATA_AXIS),) * num_args, out_specs=P()))


# ----------------------------------------------------------------------------- diagnostics


def test_rankme_matches_the_numpy_oracle_on_one_and_eight_devices():
  z = np.random.default_rng(0).normal(size=(32, 12)) * np.linspace(0.1, 3.0, 12)
  expected = oracles.rankme(z)
  np.testing.assert_allclose(monitor.rankme(jnp.asarray(z, jnp.float32)), expected, rtol=1e-5)
  sharded = _shard_mapped(monitor.rankme, parallel.make_mesh(8))(jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(sharded, expected, rtol=1e-5)


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_rankme_of_r_equal_singular_values_is_r(rank):
  """Closed form: Z = 2.5 U V^T with orthonormal U [16, r], V [10, r] has r singular values
  2.5 and K - r zeros, so p = 1/r + eps (r times), eps (K - r times) and RankMe = r up to eps."""
  rng = np.random.default_rng(rank)
  u, _ = np.linalg.qr(rng.normal(size=(16, rank)))
  v, _ = np.linalg.qr(rng.normal(size=(10, rank)))
  z = 2.5 * u @ v.T
  eps, k = monitor.RANKME_EPS, 10
  p = 1.0 / rank + eps
  closed_form = np.exp(-(rank * p * np.log(p) + (k - rank) * eps * np.log(eps)))
  np.testing.assert_allclose(closed_form, rank, rtol=1e-4)
  np.testing.assert_allclose(monitor.rankme(jnp.asarray(z, jnp.float32)), closed_form,
                             rtol=1e-4)


def test_normalized_std_matches_the_oracle_and_is_zero_when_collapsed():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(32, 6)) + np.arange(6.0)
  expected = oracles.normalized_std(z)
  np.testing.assert_allclose(monitor.normalized_std(jnp.asarray(z, jnp.float32)), expected,
                             rtol=1e-5)
  sharded = _shard_mapped(monitor.normalized_std, parallel.make_mesh(8))(
      jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(sharded, expected, rtol=1e-5)
  collapsed = np.tile(rng.normal(size=(1, 6)), (32, 1)) * rng.uniform(1, 2, (32, 1))
  np.testing.assert_allclose(monitor.normalized_std(jnp.asarray(collapsed, jnp.float32)), 0.0,
                             atol=1e-4)


def test_diagnostics_reject_a_vector():
  with pytest.raises(ValueError, match="embeddings"):
    monitor.rankme(jnp.ones(4))


# ----------------------------------------------------------------------------- the probe


def hand_written_probe_step(probe_state, features, labels):
  """Gradients of the mean cross-entropy written out in float64, then optax's Adam step."""
  params = probe_state["params"]
  loss, d_kernel, d_bias = oracles.softmax_cross_entropy_grads(
      features, labels, params["kernel"], params["bias"])
  grads = {"kernel": jnp.asarray(d_kernel, jnp.float32), "bias": jnp.asarray(d_bias, jnp.float32)}
  updates, _ = PROBE.optimizer.update(grads, probe_state["opt_state"], params)
  return loss, optax.apply_updates(params, updates)


def test_probe_step_is_an_optax_step_on_the_cross_entropy_and_detaches_features():
  rng = np.random.default_rng(2)
  features = jnp.asarray(rng.normal(size=(24, 5)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, CLASSES, 24))
  state = monitor.init_probe(PROBE, 5)
  state["params"]["kernel"] = jnp.asarray(rng.normal(size=(5, CLASSES)), jnp.float32)  # not 0
  new, metrics = monitor.probe_step(state, PROBE, features, labels)
  loss, expected = hand_written_probe_step(state, features, labels)
  np.testing.assert_allclose(metrics["probe_loss"], loss, rtol=1e-5)
  logits = np.asarray(features) @ np.asarray(state["params"]["kernel"])
  np.testing.assert_allclose(metrics["probe_accuracy"],
                             np.mean(np.argmax(logits, 1) == np.asarray(labels)), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  feature_grad = jax.grad(lambda h: monitor.probe_loss(state["params"], h, labels)[0])(features)
  assert not np.any(np.asarray(feature_grad))


def test_probe_leaves_out_unlabelled_rows_on_one_and_eight_devices():
  """Rows labelled -1 (STL-10's unlabelled images): the step equals the hand-written one on the
  labelled rows alone, also when the rows are spread over 8 devices; a batch without labels
  gives loss 0, accuracy NaN and no update."""
  rng = np.random.default_rng(4)
  features = rng.normal(size=(24, 5)).astype(np.float32)
  labels = rng.integers(0, CLASSES, 24)
  labels[rng.permutation(24)[:15]] = -1  # 9 labelled rows, unevenly spread over 8 devices
  keep = labels >= 0
  state = monitor.init_probe(PROBE, 5)
  state["params"]["kernel"] = jnp.asarray(rng.normal(size=(5, CLASSES)), jnp.float32)
  loss, expected = hand_written_probe_step(state, features[keep], labels[keep])
  logits = features[keep] @ np.asarray(state["params"]["kernel"])
  accuracy = np.mean(np.argmax(logits, 1) == labels[keep])
  sharded = jax.jit(jax.shard_map(
      lambda h, y: monitor.probe_step(state, PROBE, h, y, axis_name=parallel.DATA_AXIS),
      mesh=parallel.make_mesh(8), in_specs=(P(parallel.DATA_AXIS),) * 2, out_specs=P()))
  for new, metrics in (monitor.probe_step(state, PROBE, features, labels),
                       sharded(features, labels)):
    np.testing.assert_allclose(metrics["probe_loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["probe_accuracy"], accuracy, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  new, metrics = monitor.probe_step(state, PROBE, features, np.full(24, -1))
  assert float(metrics["probe_loss"]) == 0.0 and np.isnan(metrics["probe_accuracy"])
  for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(a, b)


def setup():
  model = models.create("mlp", projection_dim=8, hidden_sizes=(16,), bn_axis_name="data")
  method = contrastive.method(model, LOSS, AUG)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2, 16, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, CLASSES, (2, 16))
  return model, method, images, labels


def run(method, mesh, images, labels, probe=PROBE):
  """`len(images)` steps on `mesh`; the final state and each step's metrics (host copies)."""
  state = train.init_state(method, optax.sgd(LR), jax.random.key(0), images.shape[2:],
                           probe=probe)
  state = jax.device_put(state, parallel.replicated(mesh))
  step = train.make_train_step(method, optax.sgd(LR), mesh, seed=SEED, probe=probe)
  diagnostics = jax.jit(lambda e: monitor.collapse_diagnostics(e["features"], e["projections"]))
  history = []
  for x, y in zip(images, labels):
    state, metrics = step(state, *parallel.shard_host_batch((x, y), mesh))
    assert bool(metrics["finite"])
    history.append({**{k: np.asarray(v) for k, v in metrics.items() if k != "embeddings"},
                    **{k: np.asarray(v) for k, v in diagnostics(metrics["embeddings"]).items()},
                    "features": np.asarray(metrics["embeddings"]["features"])})
  return jax.tree.map(np.asarray, state), history


@functools.lru_cache(maxsize=None)
def one_device_run():
  _, method, images, labels = setup()
  return run(method, parallel.make_mesh(1), images, labels)


def test_probe_trains_on_the_first_view_and_leaves_the_encoder_update_unchanged():
  """The step's probe update equals the hand-written one on h1 = f(view 1) (the reference of
  tests/test_methods.py), and the encoder's parameters equal those of a step without probe."""
  model, method, images, labels = setup()
  state, history = one_device_run()
  without, _ = run(method, parallel.make_mesh(1), images[:1], labels[:1], probe=None)
  assert without.probe == {}
  initial = train.init_state(method, optax.sgd(LR), jax.random.key(0), (8, 8, 1), probe=PROBE)
  view1, _ = augment.two_views(AUG, jax.random.fold_in(jax.random.key(SEED), 0), images[0],
                               jnp.arange(16))
  (h1, _), _ = model.apply(initial.variables(), view1, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(history[0]["features"], h1, rtol=1e-5, atol=1e-6)
  loss, expected = hand_written_probe_step(initial.probe, h1, labels[0])
  np.testing.assert_allclose(history[0]["probe_loss"], loss, rtol=1e-5)
  assert history[0]["probe_loss"] == pytest.approx(np.log(CLASSES), rel=1e-6)  # W = 0, b = 0

  one_step, _ = run(method, parallel.make_mesh(1), images[:1], labels[:1])
  for a, b in zip(jax.tree.leaves(one_step.probe["params"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(one_step.params), jax.tree.leaves(without.params)):
    np.testing.assert_array_equal(a, b)
  assert int(state.step) == 2 and 0.0 <= history[1]["probe_accuracy"] <= 1.0


def test_probe_and_diagnostics_on_eight_devices_equal_one_device():
  _, method, images, labels = setup()
  sharded_state, sharded = run(method, parallel.make_mesh(8), images, labels)
  state, single = one_device_run()
  for a, b in zip(jax.tree.leaves((sharded_state.params, sharded_state.probe)),
                  jax.tree.leaves((state.params, state.probe))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for got, want in zip(sharded, single):
    for key in ("loss", "probe_loss", "probe_accuracy", "rankme", "rankme_projections",
                "projection_std"):
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(single[1]["rankme"], oracles.rankme(single[1]["features"]),
                             rtol=1e-4)


def test_method_without_embeddings_gets_them_from_one_more_forward_pass():
  """No `Method.embeddings`: the step runs the model on view 1 itself; for this BN-free model
  the features, hence the probe, are the same."""
  _, method, images, labels = setup()
  state, history = run(method._replace(embeddings=None), parallel.make_mesh(1), images, labels)
  reference_state, reference = one_device_run()
  np.testing.assert_allclose(history[1]["features"], reference[1]["features"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(state.probe), jax.tree.leaves(reference_state.probe)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_step_with_a_probe_needs_labels():
  _, method, images, _ = setup()
  mesh = parallel.make_mesh(1)
  state = train.init_state(method, optax.sgd(LR), jax.random.key(0), (8, 8, 1), probe=PROBE)
  step = train.make_train_step(method, optax.sgd(LR), mesh, seed=SEED, probe=PROBE)
  with pytest.raises(ValueError, match="labels=None"):
    step(state, parallel.shard_host_batch(images[0], mesh))
