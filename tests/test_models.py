"""Tests of contrax.models: shapes, the ResNet-18 parameter count, BatchNorm behaviour."""
from __future__ import annotations

import os

# Virtual CPU devices for the cross-replica BatchNorm test; only effective when this module
# is the first to initialise JAX (the test skips itself otherwise).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from contrax import models


def _images(key, shape, n=4):
  return jax.random.uniform(jax.random.key(key), (n, *shape))


def _num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _variables(model, image_shape, seed=0):
  """Variables of `init_variables`' structure filled from NumPy: compiling JAX's random
  initialisers takes seconds per model on XLA CPU, and these tests need only some values.
  Kernels ~ N(0, 1/fan_in), BN scale 1, biases and running means 0, running variances 1."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape))

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)
    ones = "scale" in name or "var" in name
    return jnp.full(leaf.shape, 1.0 if ones else 0.0, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("name, image_shape, kwargs, feature_dim", [
    ("mlp", (8, 8, 1), {}, 512),
    ("mlp", (8, 8, 1), {"hidden_sizes": (64, 32)}, 32),
    ("convnet", (32, 32, 3), {}, 128),
    ("convnet", (16, 16, 3), {"widths": (8, 16)}, 16),
    ("resnet18", (16, 16, 3), {}, 512),
    ("resnet50", (32, 32, 3), {"stage_sizes": (1, 1, 1, 1)}, 2048),
    ("vit_tiny", (32, 32, 3), {"depth": 2}, 192),
    ("vit_small", (8, 8, 1), {"depth": 1, "patch_size": 4}, 384),
])
def test_output_shapes(name, image_shape, kwargs, feature_dim):
  model = models.create(name, projection_dim=24, **kwargs)
  variables = _variables(model, image_shape)
  assert set(variables) == {"params", "batch_stats"}
  images = _images(1, image_shape, n=3)
  (features, projections), updates = model.apply(variables, images, train=True,
                                                 mutable=["batch_stats"])
  assert features.shape == (3, feature_dim) and features.dtype == jnp.float32
  assert projections.shape == (3, 24) and projections.dtype == jnp.float32
  assert set(updates) <= {"batch_stats"}
  encoded = model.apply(variables, images, method=models.ContrastiveModel.encode)
  eval_features, _ = model.apply(variables, images, train=False)
  np.testing.assert_allclose(encoded, eval_features, rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(encoded))


def test_mlp_matches_numpy_forward():
  """Normalisation (x - 0.5) / 0.25, flatten, Dense + ReLU layers, written out in float64."""
  model = models.create("mlp", hidden_sizes=(16, 8), projection_dim=4, hidden_dim=12)
  variables = _variables(model, (4, 4, 2))
  images = _images(2, (4, 4, 2), n=5)
  features, projections = model.apply(variables, images)
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  x = (np.asarray(images, np.float64).reshape(5, -1) - 0.5) / 0.25
  for layer in ("Dense_0", "Dense_1"):
    x = np.maximum(x @ params["encoder"][layer]["kernel"] + params["encoder"][layer]["bias"], 0)
  np.testing.assert_allclose(features, x, rtol=1e-5, atol=1e-5)
  head = params["head"]
  hidden = np.maximum(x @ head["Dense_0"]["kernel"] + head["Dense_0"]["bias"], 0)
  assert head["Dense_0"]["kernel"].shape == (8, 12)
  np.testing.assert_allclose(projections, hidden @ head["Dense_1"]["kernel"]
                             + head["Dense_1"]["bias"], rtol=1e-5, atol=1e-5)


def _resnet18_cifar_param_count() -> int:
  """torchvision resnet18 without fc, with a 3x3 stem: conv weights (no bias) + BN scale/bias."""
  conv = lambda k, c_in, c_out: k * k * c_in * c_out
  bn = lambda c: 2 * c
  total = conv(3, 3, 64) + bn(64)
  c_in = 64
  for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    total += conv(3, c_in, c_out) + bn(c_out) + conv(3, c_out, c_out) + bn(c_out)
    if stride != 1 or c_in != c_out:
      total += conv(1, c_in, c_out) + bn(c_out)
    total += 2 * (conv(3, c_out, c_out) + bn(c_out))
    c_in = c_out
  return total


def test_resnet18_parameter_count():
  expected = _resnet18_cifar_param_count()
  # torchvision's published resnet18 count 11,689,512, minus fc (512*1000 + 1000) and the
  # 7x7 stem (7*7*3*64), plus the 3x3 stem (3*3*3*64).
  assert expected == 11_689_512 - 513_000 - 9_408 + 1_728
  model = models.create("resnet18")
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (32, 32, 3)))
  assert _num_params(shapes["params"]["encoder"]) == expected
  # batch_stats: running mean and variance of the 20 BN layers (same sizes as scale/bias).
  bn_params = sum(np.prod(leaf.shape) for path, leaf in
                  jax.tree_util.tree_leaves_with_path(shapes["params"]["encoder"])
                  if "bn" in jax.tree_util.keystr(path))
  assert _num_params(shapes["batch_stats"]["encoder"]) == bn_params


def _resnet50_param_count(stem_kernel: int = 7) -> int:
  """torchvision resnet50 without fc: conv weights (no bias) + BN scale/bias; bottleneck
  blocks [3, 4, 6, 3] of inner width c (1x1 c, 3x3 c, 1x1 4c), a 1x1 projection shortcut in
  the first block of each stage."""
  conv = lambda k, c_in, c_out: k * k * c_in * c_out
  bn = lambda c: 2 * c
  total = conv(stem_kernel, 3, 64) + bn(64)
  c_in = 64
  for blocks, c in ((3, 64), (4, 128), (6, 256), (3, 512)):
    for block in range(blocks):
      total += conv(1, c_in, c) + bn(c) + conv(3, c, c) + bn(c) + conv(1, c, 4 * c) + bn(4 * c)
      if block == 0:
        total += conv(1, c_in, 4 * c) + bn(4 * c)
      c_in = 4 * c
  return total


def _vit_param_count(width: int, depth: int, patch: int, image_side: int, channels=3) -> int:
  """Patch embedding p²Cd + d, one position embedding per patch, the CLS token d, per block
  two LayerNorms (4d), q/k/v/out projections 4(d² + d), MLP d·4d + 4d + 4d·d + d; final
  LayerNorm 2d."""
  d, patches = width, (image_side // patch) ** 2
  block = 4 * d + 4 * (d * d + d) + (8 * d * d + 5 * d)
  return patch * patch * channels * d + d + patches * d + d + depth * block + 2 * d


@pytest.mark.parametrize("name, image_side, stem_or_patch, expected", [
    # torchvision's published resnet50 count 25,557,032 minus fc (2048*1000 + 1000).
    ("resnet50", 224, 7, 25_557_032 - 2_049_000),
    ("resnet50", 32, 3, None),
    # timm's vit_{tiny,small}_patch16_224 (5,717,416 / 22,050,664) minus the classifier
    # (d*1000 + 1000) and the CLS token's position embedding (d), which this ViT folds into
    # the learned CLS token.
    ("vit_tiny", 224, 16, 5_717_416 - 193_000 - 192),
    ("vit_small", 224, 16, 22_050_664 - 385_000 - 384),
    ("vit_tiny", 32, 4, None),
    ("vit_small", 32, 4, None),
])
def test_large_model_parameter_counts_and_shapes(name, image_side, stem_or_patch, expected):
  """Closed-form counts (and the peers' published ones at 224 px); shapes at 224 and 32 px
  through jax.eval_shape (nothing is compiled)."""
  closed_form = (_resnet50_param_count(stem_or_patch) if name == "resnet50" else
                 _vit_param_count(*models.VIT_VARIANTS[name][:2], stem_or_patch, image_side))
  if expected is not None:
    assert closed_form == expected
  model = models.create(name, projection_dim=24)
  shape = (image_side, image_side, 3)
  variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), shape))
  assert _num_params(variables["params"]["encoder"]) == closed_form
  (features, projections), _ = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((2, *shape)), train=True, mutable=["batch_stats"]),
      variables)
  dim = 2048 if name == "resnet50" else models.VIT_VARIANTS[name][0]
  assert features.shape == (2, dim) and projections.shape == (2, 24)


def _layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _vit_oracle(params, images, patch: int, heads: int) -> np.ndarray:
  """The ViT forward of Dosovitskiy et al. 2021 (eq. 1-4) in float64 NumPy."""
  from scipy.special import erf
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = (np.asarray(images, np.float64) - 0.5) / 0.25
  n, h, w, c = x.shape
  gh, gw = h // patch, w // patch
  patches = x.reshape(n, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  patches = patches.reshape(n, gh, gw, patch * patch * c)
  d = p["patch_bias"].shape[0]
  tokens = patches @ p["patch_kernel"].reshape(-1, d) + p["patch_bias"] + p["position_embedding"]
  x = np.concatenate([np.broadcast_to(p["cls_token"], (n, 1, d)),
                      tokens.reshape(n, gh * gw, d)], axis=1)
  for i in range(1, 1 + sum(k.startswith("block") for k in p)):
    b = p[f"block{i}"]
    y = _layer_norm(x, b["norm1"])
    a = b["attention"]
    q, k, v = (np.einsum("ntd,dhe->nthe", y, a[m]["kernel"]) + a[m]["bias"]
               for m in ("query", "key", "value"))
    logits = np.einsum("nqhe,nshe->nhqs", q, k) / np.sqrt(d // heads)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    o = np.einsum("nhqs,nshe->nqhe", weights, v)
    x = x + np.einsum("nqhe,hed->nqd", o, a["out"]["kernel"]) + a["out"]["bias"]
    y = _layer_norm(x, b["norm2"]) @ b["mlp_in"]["kernel"] + b["mlp_in"]["bias"]
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    x = x + y @ b["mlp_out"]["kernel"] + b["mlp_out"]["bias"]
  return _layer_norm(x, p["final_norm"])[:, 0]


def test_vit_matches_numpy_forward():
  """Every parameter random (LayerNorm scales and biases, position embeddings and CLS too)."""
  encoder = models.ViT(width=8, depth=2, num_heads=2, patch_size=2)
  shapes = jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros((1, 4, 6, 3))))
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.5, jnp.float32),
                        shapes["params"])
  images = _images(4, (4, 6, 3), n=3)
  features = encoder.apply({"params": params}, images)
  assert features.shape == (3, 8)
  np.testing.assert_allclose(features, _vit_oracle(params, images, 2, 2), rtol=1e-4, atol=1e-4)


def test_patch_size_and_stem_chosen_at_init_are_read_back_on_other_image_sizes():
  """A model initialised on 32-px images keeps its 4-px patches on 16-px crops (position
  embeddings resized from 8x8 to 4x4); a ResNet-50 initialised at 96 px keeps its 7x7 stem
  at 32 px."""
  vit = models.create("vit_tiny", depth=1)
  variables = jax.eval_shape(lambda: models.init_variables(vit, jax.random.key(0), (32, 32, 3)))
  assert variables["params"]["encoder"]["patch_kernel"].shape == (4, 4, 3, 192)
  assert variables["params"]["encoder"]["position_embedding"].shape == (8, 8, 192)
  features = jax.eval_shape(lambda v: vit.apply(v, jnp.zeros((2, 16, 16, 3)), method="encode"),
                            variables)
  assert features.shape == (2, 192)
  resnet = models.create("resnet50", stage_sizes=(1, 1, 1, 1))
  variables = jax.eval_shape(lambda: models.init_variables(resnet, jax.random.key(0),
                                                           (96, 96, 3)))
  assert variables["params"]["encoder"]["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
  features = jax.eval_shape(lambda v: resnet.apply(v, jnp.zeros((2, 32, 32, 3)),
                                                   method="encode"), variables)
  assert features.shape == (2, 2048)
  with pytest.raises(ValueError, match="not divisible by patch_size=3"):
    models.init_variables(models.create("vit_tiny", patch_size=3), jax.random.key(0), (8, 8, 1))


def test_batchnorm_running_stats_update_in_train_mode_only():
  """Flax BN: running = 0.9 running + 0.1 batch statistic (biased variance), checked in NumPy
  on the head's BN, whose input is features @ W (the Dense before BN has no bias)."""
  model = models.create("convnet", widths=(4, 8), projection_dim=3, hidden_dim=6)
  variables = _variables(model, (8, 8, 3))
  images = _images(3, (8, 8, 3), n=7)
  (features, _), updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  pre_bn = np.asarray(features, np.float64) @ np.asarray(
      variables["params"]["head"]["Dense_0"]["kernel"], np.float64)
  stats = updates["batch_stats"]["head"]["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], 0.1 * pre_bn.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * pre_bn.var(0), rtol=1e-4, atol=1e-6)
  for old, new in zip(jax.tree.leaves(variables["batch_stats"]),
                      jax.tree.leaves(updates["batch_stats"])):
    assert not np.allclose(old, new)
  _, eval_updates = model.apply(variables, images, train=False, mutable=["batch_stats"])
  for old, new in zip(jax.tree.leaves(variables["batch_stats"]),
                      jax.tree.leaves(eval_updates["batch_stats"])):
    np.testing.assert_array_equal(old, new)


def test_eval_mode_is_per_example():
  """With running statistics, an image's features do not depend on the rest of the batch."""
  model = models.create("convnet", widths=(4, 8))
  variables = _variables(model, (8, 8, 3))
  images = _images(4, (8, 8, 3), n=6)
  encode = lambda x, train: model.apply(variables, x, train, method="encode",
                                        mutable=["batch_stats"])[0]
  np.testing.assert_allclose(encode(images, False)[:3], encode(images[:3], False), atol=1e-6)
  assert not np.allclose(encode(images, True)[:3], encode(images[:3], True), atol=1e-4)


@pytest.mark.skipif(jax.device_count() < 4, reason="needs >= 4 (virtual) devices")
def test_cross_replica_batchnorm_under_shard_map():
  """bn_axis_name='data' in shard_map gives the single-device BN on the global batch."""
  devices = np.array(jax.devices()[:4])
  mesh = Mesh(devices, ("data",))
  sharded = models.create("convnet", widths=(4, 8), bn_axis_name="data")
  single = models.create("convnet", widths=(4, 8))
  variables = _variables(single, (8, 8, 3))
  images = _images(5, (8, 8, 3), n=8)

  def step(variables, images):
    (features, projections), updates = sharded.apply(variables, images, train=True,
                                                      mutable=["batch_stats"])
    return features, projections, updates["batch_stats"]

  run = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")),
                              out_specs=(P("data"), P("data"), P())))
  features, projections, stats = run(variables, images)
  (ref_features, ref_projections), ref_updates = single.apply(
      variables, images, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(features, ref_features, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(projections, ref_projections, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), stats,
               ref_updates["batch_stats"])


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = models.create("convnet", widths=(4, 8), dtype=jnp.bfloat16)
  variables = _variables(model, (8, 8, 3))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  (features, projections), _ = model.apply(variables, _images(6, (8, 8, 3)),
                                           mutable=["batch_stats"])
  assert features.dtype == projections.dtype == jnp.float32


def test_mlp_has_no_batch_stats_but_init_variables_is_uniform():
  model = models.create("mlp")
  raw = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  assert "batch_stats" not in raw
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 1))
  assert variables["batch_stats"] == {}
  _, updates = model.apply(variables, jnp.zeros((2, 8, 8, 1)), mutable=["batch_stats"])
  assert not jax.tree.leaves(updates)


def test_bad_arguments():
  with pytest.raises(ValueError, match="'mlp', 'convnet', 'resnet18'"):
    models.create("vit")
  with pytest.raises(ValueError, match="projection_dim"):
    models.create("mlp", projection_dim=0)
  with pytest.raises(ValueError, match="hidden_dim"):
    models.create("mlp", hidden_dim=-3)
  model = models.create("convnet")
  with pytest.raises(ValueError, match="rank"):
    models.init_variables(model, jax.random.key(0), (32, 32))
  variables = _variables(model, (8, 8, 3))
  with pytest.raises(TypeError, match="uint8"):
    model.apply(variables, jnp.zeros((2, 8, 8, 3), jnp.uint8), train=False)
