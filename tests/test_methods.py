"""Methods (contrax.methods) composed by the one training step (train.make_train_step)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from contrax import augment, models, parallel, runs, train
from contrax.losses.infonce import infonce
from contrax.methods import contrastive

AUG = augment.Augmentation(noise_std=0.05)
LOSS = functools.partial(infonce, temperature=0.5)
LR, SEED = 0.3, 5


def setup(init_extra=None):
  model = models.create("mlp", projection_dim=8, hidden_sizes=(16,), bn_axis_name="data")
  method = contrastive.method(model, LOSS, AUG)
  if init_extra is not None:
    method = method._replace(init_extra=init_extra)
  state = train.init_state(method, optax.sgd(LR), jax.random.key(0), (8, 8, 1))
  images = np.random.default_rng(1).integers(0, 256, (3, 16, 8, 8, 1), dtype=np.uint8)
  return model, method, state, images


def test_one_step_is_sgd_on_the_loss_of_two_views():
  """Reference written out: views with keys fold_in(key(seed), step) and the global sample
  index, both views through the model as one batch, InfoNCE of the two halves, one SGD step."""
  model, method, state, images = setup()
  mesh = parallel.make_mesh(1)
  step = train.make_train_step(method, optax.sgd(LR), mesh, seed=SEED)
  params0 = state.params
  view1, view2 = augment.two_views(AUG, jax.random.fold_in(jax.random.key(SEED), 0), images[0],
                                   jnp.arange(16))

  def loss_of(params):
    (_, z), _ = model.apply({"params": params, "batch_stats": state.batch_stats},
                            jnp.concatenate([view1, view2]), train=True, mutable=["batch_stats"])
    return LOSS(z[:16], z[16:])

  loss, grads = jax.value_and_grad(loss_of)(params0)
  expected = jax.tree.map(lambda p, g: p - LR * g, params0, grads)
  new, metrics = step(jax.device_put(state, parallel.replicated(mesh)),
                      parallel.shard_host_batch(images[0], mesh))
  assert bool(metrics["finite"]) and int(new.step) == 1 and new.extra == {}
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_extra_state_is_updated_after_each_step_and_checkpointed(tmp_path):
  """An EMA of the parameters as extra state (a BYOL-style target): after steps with
  parameters p_1, p_2, ... it equals e_k = (e_{k-1} + p_k) / 2, e_0 = p_0, on 8 devices."""
  model, method, state, images = setup(init_extra=lambda params: {"ema": params})
  method = method._replace(update_extra=lambda extra, params, outputs, **_: {
      "ema": jax.tree.map(lambda e, p: 0.5 * (e + p), extra["ema"], params)})
  mesh = parallel.make_mesh(8)
  step = train.make_train_step(method, optax.sgd(LR), mesh, seed=SEED)
  expected = jax.tree.map(np.asarray, state.params)  # the step donates the state
  state = jax.device_put(state, parallel.replicated(mesh))
  for batch in images:
    state, metrics = step(state, parallel.shard_host_batch(batch, mesh))
    assert bool(metrics["finite"])
    expected = jax.tree.map(lambda e, p: 0.5 * (e + np.asarray(p)), expected, state.params)
  for a, b in zip(jax.tree.leaves(state.extra["ema"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  manager = runs.checkpoint_manager(str(tmp_path))
  runs.save(manager, state)
  manager.wait_until_finished()
  restored = runs.restore(manager, state)
  for a, b in zip(jax.tree.leaves(restored.extra), jax.tree.leaves(state.extra)):
    np.testing.assert_array_equal(a, b)


def test_non_finite_extra_state_drops_the_update():
  model, method, state, images = setup(init_extra=lambda params: {"count": jnp.zeros(())})
  method = method._replace(update_extra=lambda extra, params, outputs, **_: {
      "count": extra["count"] / 0.0})
  mesh = parallel.make_mesh(1)
  step = train.make_train_step(method, optax.sgd(LR), mesh, seed=SEED)
  before = jax.tree.map(np.asarray, state.params)
  new, metrics = step(jax.device_put(state, parallel.replicated(mesh)),
                      parallel.shard_host_batch(images[0], mesh))
  assert not bool(metrics["finite"]) and float(new.extra["count"]) == 0.0
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


def test_ema_update_and_byol_cosine_momentum_schedule():
  """Closed forms: m(0) = m_0, m(T) = 1, m(T/2) = (1 + m_0)/2; update is the convex mix."""
  from contrax.methods import _ema
  np.testing.assert_allclose(_ema.cosine_momentum(0, 100, 0.99), 0.99, rtol=1e-7)
  np.testing.assert_allclose(_ema.cosine_momentum(100, 100, 0.99), 1.0, rtol=1e-7)
  np.testing.assert_allclose(_ema.cosine_momentum(50, 100, 0.99), 0.995, rtol=1e-6)
  out = _ema.update({"w": jnp.array([1.0, 3.0])}, {"w": jnp.array([3.0, -1.0])}, 0.75)
  np.testing.assert_allclose(out["w"], [1.5, 2.0])


def test_every_method_says_where_its_first_view_embeddings_are():
  """The online probe and the collapse diagnostics read `Method.embeddings`; a method without
  it would cost every step one more forward pass of the model."""
  from contrax import methods
  config = train.default_config()
  config.steps = 10
  model = train.create_model(config)
  for name in methods.NAMES:
    config.method.name = name
    assert train.create_method(config, model).embeddings is not None, name
