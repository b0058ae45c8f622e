"""Mixed precision (`config.compute_dtype = "bfloat16"`): bfloat16 activations and matmuls,
float32 parameters, optimiser state and loss side.

Tolerances. bfloat16 keeps 8 significant bits: rounding to nearest moves a value by at most
u = 2⁻⁹ ≈ 1.95e-3 relative. With the loss side in float32 (`contrax.pairs.at_least_float32`),
a bf16 projection changes an objective in two places only:
1. its inputs are the bf16-rounded projections, and the float32 loss of those is computed
   exactly as for float32 inputs: equal to float32 rounding (rtol 1e-6), and the gradient
   is that float32 gradient rounded once to bfloat16 (each entry within u relative, checked
   with rtol 2u);
2. against float32 at the unrounded inputs, the loss moves by the input rounding times the
   loss's sensitivity: every objective here is a smooth function of cosine similarities
   scaled by 1/t = 2 (or of standardised columns, Barlow), so |ΔL| <= 4u·max(1, |L|) ≈ 8e-3
   relative is a safe bound (measured on these inputs: <= 6e-4); the gradient moves by its
   own rounding (u per entry) plus the Hessian times the input rounding: measured 4.5e-3 to
   4.7e-3 in relative 2-norm on every objective; we allow 1e-2 (about 5u).
A loss computed in bfloat16 throughout would fail check 1 by orders of magnitude (its
log-sum-exp alone rounds at 2⁻⁸ relative, ~1e-2 on a loss of 2.5).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from contrax import augment, models, objectives, pairs, parallel, train
from contrax.methods import contrastive

U = 2.0**-9  # bfloat16 unit roundoff (round to nearest, 8 significant bits)
LOSS_RTOL_VS_F32 = 4 * U      # check 2, loss
GRAD_RTOL_VS_F32 = 1e-2       # check 2, gradient (relative 2-norm)
B, D = 32, 16


def fixed_views():
  rng = np.random.default_rng(0)
  z1 = rng.standard_normal((B, D)).astype(np.float32)
  z2 = z1 + 0.5 * rng.standard_normal((B, D)).astype(np.float32)
  return jnp.asarray(z1), jnp.asarray(z2)


def value_and_grads(preset: str):
  loss_fn = objectives.make(objectives.apply_preset(train.default_config(), preset))
  return jax.jit(jax.value_and_grad(lambda a, b: loss_fn(a, b), argnums=(0, 1)))


@pytest.mark.parametrize("preset", list(objectives.PRESETS))
def test_bf16_projections_loss_and_gradients(preset):
  """Check 1 (the loss side runs in float32 whatever the projections' dtype) and check 2
  (loss and gradient of bf16 projections against float32), tolerances above."""
  fn = value_and_grads(preset)
  z1, z2 = fixed_views()
  b1, b2 = z1.astype(jnp.bfloat16), z2.astype(jnp.bfloat16)
  loss16, grads16 = fn(b1, b2)
  rounded_loss, rounded_grads = fn(b1.astype(jnp.float32), b2.astype(jnp.float32))
  assert loss16.dtype == jnp.float32 and all(g.dtype == jnp.bfloat16 for g in grads16)
  np.testing.assert_allclose(loss16, rounded_loss, rtol=1e-6, atol=1e-7)
  for g, ref in zip(grads16, rounded_grads):
    np.testing.assert_allclose(np.asarray(g, np.float32), ref, rtol=2 * U, atol=1e-30)

  loss32, grads32 = fn(z1, z2)
  assert abs(float(loss16) - float(loss32)) <= LOSS_RTOL_VS_F32 * max(1.0, abs(float(loss32)))
  g32 = np.concatenate([np.asarray(g) for g in grads32])
  g16 = np.concatenate([np.asarray(g, np.float32) for g in grads16])
  assert np.linalg.norm(g16 - g32) <= GRAD_RTOL_VS_F32 * np.linalg.norm(g32)


def test_at_least_float32_upcasts_only_narrow_floats():
  assert pairs.at_least_float32(jnp.ones(2, jnp.bfloat16)).dtype == jnp.float32
  assert pairs.at_least_float32(jnp.ones(2, jnp.float16)).dtype == jnp.float32
  assert pairs.at_least_float32(jnp.ones(2, jnp.float32)).dtype == jnp.float32
  assert pairs.at_least_float32(jnp.ones(2, jnp.int32)).dtype == jnp.int32


def tiny_config(model: str, dtype: str):
  c = train.default_config()
  c.update(model=model, compute_dtype=dtype, projection_dim=8, batch_size=16)
  if model != "mlp":
    c.widths = (4, 8)
  return c


def dtypes_of(tree) -> set:
  return {x.dtype for x in jax.tree.leaves(tree)}


@pytest.mark.parametrize("model", ["mlp", pytest.param("convnet", marks=pytest.mark.slow)])
def test_bf16_model_computes_in_bf16_and_keeps_float32_state(model):
  """Parameters, BN statistics and optimiser state float32; matmuls / convolutions on bf16
  operands; features and projections returned in float32; one step's loss within tolerance
  of float32."""
  images = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
  mesh = parallel.make_mesh(1)
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(model, dtype)
    net = train.create_model(config)
    method = contrastive.method(net, objectives.make(config), augment.Augmentation(noise_std=0.05))
    optimizer = optax.adamw(1e-3)
    state = train.init_state(method, optimizer, jax.random.key(0), (8, 8, 1))
    assert dtypes_of((state.params, state.batch_stats, state.opt_state)) <= {
        jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    x = jnp.asarray(images, jnp.float32) / 255
    jaxpr = jax.make_jaxpr(lambda v: net.apply(v, x, train=False))(state.variables())
    matmuls = [e for e in jaxpr.jaxpr.eqns
               if e.primitive.name in ("dot_general", "conv_general_dilated")]
    assert matmuls and {v.aval.dtype for e in matmuls for v in e.invars} == {jnp.dtype(dtype)}
    features, z = net.apply(state.variables(), x, train=False)
    assert features.dtype == z.dtype == jnp.float32  # the encoder's output is cast back too
    step = train.make_train_step(method, optimizer, mesh, seed=0)
    new, metrics = step(jax.device_put(state, parallel.replicated(mesh)),
                        parallel.shard_host_batch(images, mesh))
    assert bool(metrics["finite"])
    assert dtypes_of((new.params, new.opt_state)) <= {jnp.dtype(jnp.float32),
                                                      jnp.dtype(jnp.int32)}
    results[dtype] = float(metrics["loss"])
  # The whole network in bf16 (not just the projections): activations round at every layer,
  # so the tolerance is a few percent of the loss rather than check 2's 4u.
  assert abs(results["bfloat16"] - results["float32"]) <= 3e-2 * abs(results["float32"])


def test_compute_dtype_is_checked():
  config = train.default_config()
  config.compute_dtype = "float16"
  with pytest.raises(ValueError, match="compute_dtype.*'float16'.*'bfloat16'"):
    train.validate_config(config)
