"""Flax (linen) encoders and projection heads for contrastive learning.

Every encoder takes float images `[n, H, W, C]` with values in [0, 1], normalises them inside
as `(x - 0.5) / 0.25` (a fixed, data-independent map to roughly zero mean and unit scale, so
that the same model works on digits, CIFAR or any image folder without per-dataset
statistics), and returns features `[n, D]` in float32:

- `MLP`: flatten, hidden Dense + ReLU layers; features are the last hidden layer. The
  default for 8x8 digits.
- `ConvNet`: four 3x3 conv + BN + ReLU stages (16, 32, 64, 128 channels; stride 2 after the
  first), global average pooling, 128-d features. Small enough to train on a laptop CPU.
- `ResNet18`: the CIFAR variant of He et al. 2016 used by SimCLR (Chen et al. 2020) on
  32x32 images: 3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2] with 64/128/256/512
  channels, global average pooling, 512-d features (11,168,832 parameters).

`ProjectionHead` is SimCLR's projector g: Linear -> BN -> ReLU -> Linear(projection_dim)
(BN optional). `ContrastiveModel` pairs an encoder with a head and is what `create` returns.

BatchNorm everywhere is `nn.BatchNorm(use_running_average=not train, momentum=0.9,
axis_name=bn_axis_name)`: inside `shard_map` with `bn_axis_name='data'` the batch statistics
are averaged over the data axis (cross-replica BN, as in SimCLR's global BN).

Variables are explicit pytrees `{'params': ..., 'batch_stats': ...}`. Models without
BatchNorm (the MLP with its default head) have no 'batch_stats' collection in `model.init`;
use `init_variables`, which always returns both keys (an empty dict when there is no BN),
and apply with `mutable=['batch_stats']` in training: for a BN-free model the returned
updates are simply empty. Compute runs in `dtype` (float32 by default; bfloat16 for speed),
parameters are stored in `param_dtype` (float32), and features and projections are returned
in float32.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from contrax import _checks

__all__ = [
    "MODELS", "PIXEL_MEAN", "PIXEL_SCALE", "Dtype", "normalize_images", "MLP", "ConvNet",
    "BasicBlock", "ResNet18", "ProjectionHead", "ContrastiveModel", "create", "init_variables",
    "NTKMLP", "AllenZhuMLP",
]

MODELS = ("mlp", "convnet", "resnet18")

PIXEL_MEAN = 0.5
PIXEL_SCALE = 0.25

Dtype = Any


def normalize_images(images: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
  """`(x - 0.5) / 0.25` for images in [0, 1], cast to the compute `dtype`."""
  return ((jnp.asarray(images, jnp.float32) - PIXEL_MEAN) / PIXEL_SCALE).astype(dtype)


def _check_images(images: jax.Array, min_rank: int = 2) -> None:
  if images.ndim < min_rank:
    raise ValueError(f"images must have rank >= {min_rank} ([n, ...]), got shape {images.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"images must be floating point in [0, 1] (divide uint8 by 255 first), "
                    f"got dtype {images.dtype}")


def _batch_norm(train: bool, axis_name: Optional[str], dtype: Dtype, param_dtype: Dtype,
                name: Optional[str] = None, scale_init=nn.initializers.ones) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name, dtype=dtype, param_dtype=param_dtype,
                      scale_init=scale_init, name=name)


class MLP(nn.Module):
  """Flatten -> [Dense(h) -> ReLU] for h in `hidden_sizes`; features are the last hidden layer."""
  hidden_sizes: Sequence[int] = (512, 512)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = True) -> jax.Array:
    del train  # no BatchNorm or dropout: same function in both modes
    _check_images(images)
    x = normalize_images(images, self.dtype).reshape(images.shape[0], -1)
    for width in self.hidden_sizes:
      x = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype)(x))
    return x.astype(jnp.float32)


class ConvNet(nn.Module):
  """Small CNN: 3x3 conv + BN + ReLU stages, stride 2 from the second stage, global average pool.

  With the default widths (16, 32, 64, 128) on 32x32x3 inputs: spatial sizes 32, 16, 8, 4,
  about 4 M multiply-adds per image, 128-d features. The full-resolution first stage costs
  more CPU time than its FLOPs suggest, hence its narrow width; widen with `widths=`.
  """
  widths: Sequence[int] = (16, 32, 64, 128)
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = True) -> jax.Array:
    _check_images(images, min_rank=4)
    x = normalize_images(images, self.dtype)
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), strides=1 if i == 0 else 2, padding=1, use_bias=False,
                  dtype=self.dtype, param_dtype=self.param_dtype)(x)
      x = _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)(x)
      x = nn.relu(x)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


class BasicBlock(nn.Module):
  """ResNet BasicBlock: conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes)."""
  channels: int
  strides: int = 1
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    conv = lambda c, k, s, name: nn.Conv(c, (k, k), strides=s, padding=k // 2, use_bias=False,
                                         dtype=self.dtype, param_dtype=self.param_dtype,
                                         name=name)
    bn = lambda name: _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype, name)
    y = nn.relu(bn("bn1")(conv(self.channels, 3, self.strides, "conv1")(x)))
    y = bn("bn2")(conv(self.channels, 3, 1, "conv2")(y))
    if self.strides != 1 or x.shape[-1] != self.channels:
      x = bn("shortcut_bn")(conv(self.channels, 1, self.strides, "shortcut_conv")(x))
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 with the CIFAR stem (He et al. 2016; SimCLR's CIFAR-10 variant, Chen et al. 2020).

  3x3 stride-1 stem conv (64) + BN + ReLU, no max-pool, four stages of two BasicBlocks with
  64/128/256/512 channels (stride 2 at the start of stages 2-4), global average pooling ->
  512-d features. Convolutions have no bias (BN follows each one).
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = True) -> jax.Array:
    _check_images(images, min_rank=4)
    x = normalize_images(images, self.dtype)
    x = nn.Conv(self.widths[0], (3, 3), strides=1, padding=1, use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, name="stem_conv")(x)
    x = nn.relu(_batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype,
                            "stem_bn")(x))
    for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, strides, self.bn_axis_name, self.dtype, self.param_dtype,
                       name=f"stage{stage + 1}_block{block + 1}")(x, train)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


class ProjectionHead(nn.Module):
  """SimCLR projector g (Chen et al. 2020): Dense(hidden) -> [BN] -> ReLU -> Dense(projection_dim).

  `hidden_dim=None` uses the feature dimension (as SimCLR does). With `batch_norm=True` the
  first Dense has no bias (BN's shift replaces it).
  """
  projection_dim: int = 128
  hidden_dim: Optional[int] = None
  batch_norm: bool = True
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, train: bool = True) -> jax.Array:
    hidden = self.hidden_dim or features.shape[-1]
    x = features.astype(self.dtype)
    x = nn.Dense(hidden, use_bias=not self.batch_norm, dtype=self.dtype,
                 param_dtype=self.param_dtype)(x)
    if self.batch_norm:
      x = _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)(x)
    x = nn.relu(x)
    x = nn.Dense(self.projection_dim, dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return x.astype(jnp.float32)


class ContrastiveModel(nn.Module):
  """Encoder f followed by projection head g: `images -> (h = f(x), z = g(h))`.

  The contrastive loss uses z; evaluation uses h (`model.apply(v, x, method=ContrastiveModel.encode)`).
  """
  encoder: nn.Module
  head: nn.Module

  def __call__(self, images: jax.Array, train: bool = True) -> tuple[jax.Array, jax.Array]:
    features = self.encoder(images, train)
    return features, self.head(features, train)

  def encode(self, images: jax.Array, train: bool = False) -> jax.Array:
    return self.encoder(images, train)


def create(name: str, *, projection_dim: int = 128, hidden_dim: Optional[int] = None,
           head_batch_norm: Optional[bool] = None, bn_axis_name: Optional[str] = None,
           dtype: Dtype = jnp.float32, **encoder_kwargs) -> ContrastiveModel:
  """Build `ContrastiveModel(encoder=<name>, head=ProjectionHead(...))`.

  Args:
    name: one of `MODELS` ('mlp', 'convnet', 'resnet18').
    projection_dim: output dimension of the head (128 as in SimCLR).
    hidden_dim: hidden width of the head; None = the encoder's feature dimension.
    head_batch_norm: BN in the head; None = True for the conv encoders, False for 'mlp' (so
      the default MLP model has no BatchNorm at all and no 'batch_stats').
    bn_axis_name: mesh axis over which BN statistics are averaged (e.g. 'data' in shard_map).
    dtype: compute dtype of encoder and head (parameters stay float32).
    **encoder_kwargs: passed to the encoder (`hidden_sizes` for MLP, `widths` for ConvNet,
      `stage_sizes`/`widths` for ResNet18).
  """
  _checks.choice("name", name, MODELS)
  _checks.positive_int("projection_dim", projection_dim)
  if hidden_dim is not None:
    _checks.positive_int("hidden_dim", hidden_dim)
  if name == "mlp":
    encoder = MLP(dtype=dtype, **encoder_kwargs)
  elif name == "convnet":
    encoder = ConvNet(bn_axis_name=bn_axis_name, dtype=dtype, **encoder_kwargs)
  else:
    encoder = ResNet18(bn_axis_name=bn_axis_name, dtype=dtype, **encoder_kwargs)
  if head_batch_norm is None:
    head_batch_norm = name != "mlp"
  head = ProjectionHead(projection_dim=projection_dim, hidden_dim=hidden_dim,
                        batch_norm=bool(head_batch_norm), bn_axis_name=bn_axis_name, dtype=dtype)
  return ContrastiveModel(encoder=encoder, head=head)


def init_variables(model: nn.Module, key: jax.Array, image_shape: Sequence[int],
                   batch_size: int = 2) -> dict:
  """`model.init` on zeros `[batch_size, *image_shape]`, returning `{'params', 'batch_stats'}`.

  'batch_stats' is an empty dict for models without BatchNorm, so training code can always
  apply with `{'params': p, 'batch_stats': s}` and `mutable=['batch_stats']`.
  """
  _checks.positive_int("batch_size", batch_size)
  images = jnp.zeros((batch_size, *image_shape), jnp.float32)
  # One compiled program instead of one dispatch per initialiser op (much faster on CPU).
  variables = jax.jit(lambda key, images: model.init(key, images, train=False))(key, images)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


# --- Over-parameterised ReLU encoders for the NTK / convergence studies ([P000] Merad et al.) ---
#
# Both take vectors `[n, d_in]` (trailing dimensions are flattened; no image normalisation:
# theory inputs are points on the sphere) and return `[n, out_dim]` outputs (float32; float64
# for float64 inputs, which the NTK tests use). Each trained layer is a bare kernel
# `params['W<l>']` acting as `y = u @ W`; outside `init` the layer sows `u` into
# 'intermediates' and perturbs `y` under 'perturbations' with the same name, which is the
# contract `contrax.ntk.layerwise_ntk` relies on.


def _check_widths(width: int, depth: int, out_dim: int) -> None:
  _checks.positive_int("width", width)
  _checks.positive_int("depth", depth)
  _checks.positive_int("out_dim", out_dim)


def _as_vectors(x: jax.Array) -> jax.Array:
  """`[n, ...] -> [n, d_in]` in floating point (float32 unless x is already float64)."""
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"x must have shape [n, d_in, ...], got shape {x.shape}")
  return jnp.reshape(x.astype(jnp.result_type(x.dtype, jnp.float32)), (x.shape[0], -1))


def _ntk_dense(module: nn.Module, name: str, u: jax.Array, kernel: jax.Array) -> jax.Array:
  """`u @ kernel`, exposing `u` and the pre-activation to the layer-wise NTK."""
  module.sow("intermediates", name, u)
  y = u @ kernel
  if not module.is_initializing():
    y = module.perturb(name, y)
  return y


class NTKMLP(nn.Module):
  """Deep ReLU MLP in NTK parameterisation (Jacot et al. 2018; [P000] Merad et al. 2020).

  With `h_0 = x`, `L = depth` hidden layers of width `m = width` and weights `W_l ~ N(0, 1)`:

      h_l = relu(σ_w / √fan_in(l) · h_{l-1} W_l),   l = 1..L
      f(x) = σ_out / √m · h_L W_{L+1}                (W_{L+1}: m x out_dim)

  All L + 1 kernels (`params['W1'] .. params['W<L+1>']`) are trained. σ_w = √2 keeps the
  forward norm `‖h_l‖² / fan` ≈ `‖x‖² / d_in` at every depth (He scaling); under gradient
  descent with a width-independent step each weight moves O(1/√m) (the lazy regime).
  """
  width: int
  depth: int
  out_dim: int
  sigma_w: float = 2.0 ** 0.5
  sigma_out: float = 1.0

  def __post_init__(self):
    _check_widths(self.width, self.depth, self.out_dim)
    _checks.positive("sigma_w", self.sigma_w)
    _checks.positive("sigma_out", self.sigma_out)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _as_vectors(x)
    sizes = [self.width] * self.depth + [self.out_dim]
    for l, fan_out in enumerate(sizes, start=1):
      fan_in = h.shape[-1]
      kernel = self.param(f"W{l}", nn.initializers.normal(1.0), (fan_in, fan_out))
      sigma = self.sigma_w if l <= self.depth else self.sigma_out
      y = _ntk_dense(self, f"W{l}", h * (sigma / fan_in ** 0.5), kernel)
      h = nn.relu(y) if l <= self.depth else y
    return h


class AllenZhuMLP(nn.Module):
  """Deep ReLU MLP in the standard parameterisation of Allen-Zhu, Li & Song (2019).

      h_0 = relu(x A),   h_l = relu(h_{l-1} W_l) (l = 1..L),   f(x) = h_L B

  with `A ~ N(0, 2/m)` (d_in x m), `W_l ~ N(0, 2/m)` (m x m), `B ~ N(0, 1/out_dim)`
  (m x out_dim). Only the L = `depth` hidden kernels `params['W1'] .. params['W<L>']` are
  trained; A and B are fixed and live in the separate 'frozen' collection, so gradient
  descent and the NTK act on `variables['params']` alone. Under gradient descent the step
  has to shrink like 1/m for the dynamics to stay width-independent.
  """
  width: int
  depth: int
  out_dim: int

  def __post_init__(self):
    _check_widths(self.width, self.depth, self.out_dim)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _as_vectors(x)
    m = self.width
    first = self.variable(
        "frozen", "A",
        lambda: nn.initializers.normal((2.0 / m) ** 0.5)(self.make_rng("params"),
                                                           (h.shape[-1], m)))
    h = nn.relu(h @ first.value)
    for l in range(1, self.depth + 1):
      kernel = self.param(f"W{l}", nn.initializers.normal((2.0 / m) ** 0.5), (m, m))
      h = nn.relu(_ntk_dense(self, f"W{l}", h, kernel))
    last = self.variable(
        "frozen", "B",
        lambda: nn.initializers.normal((1.0 / self.out_dim) ** 0.5)(self.make_rng("params"),
                                                                      (m, self.out_dim)))
    return h @ last.value
