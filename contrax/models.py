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
- `ResNet50`: the ImageNet ResNet-50 of He et al. 2016 (torchvision's "v1.5": the stride sits
  in the 3x3 conv of a bottleneck): 7x7/2 stem + 3x3/2 max-pool for 224-pixel inputs (or the
  CIFAR stem, `stem='cifar'`: 3x3/1, no max-pool), bottleneck blocks [3, 4, 6, 3] with
  64/128/256/512 inner channels (x4 out), global average pooling, 2048-d features
  (23,508,032 parameters with the ImageNet stem, as torchvision's trunk without fc).
- `ViT`: the Vision Transformer of Dosovitskiy et al. 2021 with a CLS token, learned position
  embeddings and pre-norm blocks; features are the CLS token after the final LayerNorm.
  `vit_tiny` (width 192, depth 12, 3 heads; 5,524,416 parameters at 224 px with 16-px
  patches) and `vit_small` (384, 12, 6; 21,665,664), as timm's `vit_{tiny,small}_patch16_224`
  without their classifier.

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
    "BasicBlock", "ResNet18", "Bottleneck", "ResNet50", "STEMS", "ViT", "VIT_VARIANTS",
    "default_patch_size", "ProjectionHead", "ContrastiveModel", "create", "init_variables",
    "NTKMLP", "AllenZhuMLP",
]

MODELS = ("mlp", "convnet", "resnet18", "resnet50", "vit_tiny", "vit_small")

# name -> (width, depth, heads) of the ViT variants (Touvron et al. 2021's DeiT-Ti / DeiT-S,
# the sizes timm and solo-learn call vit_tiny / vit_small).
VIT_VARIANTS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6)}

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


class _ResidualBlock(nn.Module):
  """The fields and the conv-BN chain that BasicBlock and Bottleneck share."""
  channels: int
  strides: int = 1
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _residual(self, x: jax.Array, layers, train: bool) -> jax.Array:
    """conv_i-BN_i for each (out channels, kernel, stride) of `layers`, ReLU between them, plus
    the shortcut (1x1 conv + BN when the shape changes), ReLU after the sum. Called from the
    subclasses' compact `__call__`, so the submodules land in the block's own scope as conv1,
    bn1, ..., shortcut_conv, shortcut_bn (the parameter names checkpoints hold)."""
    conv = lambda c, k, s, name: nn.Conv(c, (k, k), strides=s, padding=k // 2, use_bias=False,
                                         dtype=self.dtype, param_dtype=self.param_dtype,
                                         name=name)
    bn = lambda name: _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype, name)
    y = x
    for i, (c, k, s) in enumerate(layers, 1):
      y = bn(f"bn{i}")(conv(c, k, s, f"conv{i}")(nn.relu(y) if i > 1 else y))
    out = layers[-1][0]
    if self.strides != 1 or x.shape[-1] != out:
      x = bn("shortcut_bn")(conv(out, 1, self.strides, "shortcut_conv")(x))
    return nn.relu(x + y)


class BasicBlock(_ResidualBlock):
  """ResNet BasicBlock: conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    return self._residual(x, [(self.channels, 3, self.strides), (self.channels, 3, 1)], train)


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


def _initialised_shape(module: nn.Module, *path: str) -> Optional[tuple]:
  """The shape of the parameter at `path` under `module` if it exists (outside `init`), else
  None: lets a module read back an architecture choice it made from the image size at init."""
  tree: Any = module.variables.get("params", {})  # nested mappings, an array at the end
  for key in path:
    if key not in tree:
      return None
    tree = tree[key]
  return tuple(tree.shape)


class Bottleneck(_ResidualBlock):
  """ResNet bottleneck block (He et al. 2016), torchvision's "v1.5" layout (the stride sits in
  the 3x3 conv): conv1x1(c)-BN-ReLU-conv3x3(c, stride)-BN-ReLU-conv1x1(4c)-BN plus shortcut
  (1x1 conv + BN when the shape changes), ReLU after the sum."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    c = self.channels
    return self._residual(x, [(c, 1, 1), (c, 3, self.strides), (4 * c, 1, 1)], train)


STEMS = ("imagenet", "cifar")


class ResNet50(nn.Module):
  """ResNet-50 (He et al. 2016) with bottleneck blocks [3, 4, 6, 3] and 64/128/256/512 inner
  channels (256/512/1024/2048 out; stride 2 at the start of stages 2-4), global average
  pooling -> 2048-d features. Convolutions have no bias (BN follows each one).

  `stem`: 'imagenet' = 7x7/2 conv (64) + BN + ReLU + 3x3/2 max-pool (224-pixel inputs:
  56x56 after the stem, 7x7 before pooling); 'cifar' = 3x3/1 conv + BN + ReLU, no max-pool
  (the small-image variant SimCLR and solo-learn use at 32 px). None picks 'cifar' for images
  of side <= 64 px and 'imagenet' above at init; afterwards the stem is read from the
  parameters, so a model initialised on 224-px views keeps its stem on 96-px crops.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: Optional[str] = None
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = True) -> jax.Array:
    _check_images(images, min_rank=4)
    stem = self.stem
    if stem is None:
      kernel = _initialised_shape(self, "stem_conv", "kernel")
      small = images.shape[1] <= 64 if kernel is None else kernel[0] == 3
      stem = "cifar" if small else "imagenet"
    _checks.choice("stem", stem, STEMS)
    x = normalize_images(images, self.dtype)
    k, s = (7, 2) if stem == "imagenet" else (3, 1)
    x = nn.Conv(self.widths[0], (k, k), strides=s, padding=k // 2, use_bias=False,
                dtype=self.dtype, param_dtype=self.param_dtype, name="stem_conv")(x)
    x = nn.relu(_batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype,
                            "stem_bn")(x))
    if stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = Bottleneck(width, strides, self.bn_axis_name, self.dtype, self.param_dtype,
                       name=f"stage{stage + 1}_block{block + 1}")(x, train)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


def default_patch_size(image_side: int) -> int:
  """The ViT patch size for square images of side `image_side`: 16 from 224 px (ViT-B/16's
  14x14 grid), else `side // 8` (an 8x8 grid: 4 px at 32 px, as ViTs on CIFAR use), at least 1."""
  return 16 if image_side >= 224 else max(1, image_side // 8)


class _TransformerBlock(nn.Module):
  """Pre-norm encoder block: x + MHSA(LN(x)), then x + MLP(LN(x)) with MLP = Dense(4d) -> GELU
  -> Dense(d) (Dosovitskiy et al. 2021, eq. 2-3)."""
  num_heads: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    dense = lambda features, name: nn.Dense(  # noqa: E731
        features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(1e-6))
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype,  # noqa: E731
                                     param_dtype=self.param_dtype, name=name)
    y = norm("norm1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(), deterministic=True, name="attention")(y)
    x = x + y
    y = dense(self.mlp_ratio * width, "mlp_in")(norm("norm2")(x))
    y = dense(width, "mlp_out")(nn.gelu(y, approximate=False))
    return x + y


class ViT(nn.Module):
  """Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

  Images [n, H, W, C] -> non-overlapping p x p patches, each flattened and linearly embedded
  (`patch_kernel` [p, p, C, d] + bias) -> + learned position embeddings ([gh, gw, d], one per
  patch) -> a learned CLS token prepended -> `depth` pre-norm blocks (LayerNorm eps 1e-6,
  `num_heads`-head self-attention, GELU MLP of width 4d) -> final LayerNorm -> the CLS token
  is the d-dimensional feature. No dropout.

  Parameters: p²Cd + d (patch embedding) + gh·gw·d (positions) + d (CLS) + depth (12d² + 13d)
  + 2d (final LayerNorm). The CLS token carries no position embedding of its own (a learned
  constant added to a learned constant; big_vision's layout), so timm's counts are d higher.

  `patch_size` None is chosen from the image side at init (`default_patch_size`: 16 at 224 px,
  4 at 32 px) and read back from the parameters afterwards. Images whose patch grid differs
  from the one of init (multi-crop views) get the position embeddings resized bicubically, as
  DINO does (Caron et al. 2021).
  """
  width: int = 192
  depth: int = 12
  num_heads: int = 3
  patch_size: Optional[int] = None
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = True) -> jax.Array:
    del train  # no BatchNorm or dropout: same function in both modes
    _check_images(images, min_rank=4)
    n, height, width, channels = images.shape
    kernel_shape = _initialised_shape(self, "patch_kernel")
    p = self.patch_size or (kernel_shape[0] if kernel_shape else default_patch_size(height))
    _checks.positive_int("patch_size", p)
    if height % p or width % p:
      raise ValueError(f"image size {height}x{width} is not divisible by patch_size={p}")
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}")
    grid_h, grid_w = height // p, width // p
    x = normalize_images(images, self.dtype)
    patches = x.reshape(n, grid_h, p, grid_w, p, channels).transpose(0, 1, 3, 2, 4, 5)
    kernel = self.param("patch_kernel", nn.initializers.lecun_normal(in_axis=(0, 1, 2)),
                        (p, p, channels, self.width), self.param_dtype)
    bias = self.param("patch_bias", nn.initializers.zeros, (self.width,), self.param_dtype)
    tokens = jnp.einsum("nhwijc,ijcd->nhwd", patches, kernel.astype(self.dtype)) + bias.astype(
        self.dtype)
    position = self.param("position_embedding", nn.initializers.normal(0.02),
                          _initialised_shape(self, "position_embedding")
                          or (grid_h, grid_w, self.width), self.param_dtype)
    if position.shape[:2] != (grid_h, grid_w):
      position = jax.image.resize(position, (grid_h, grid_w, self.width), "bicubic")
    tokens = (tokens + position.astype(self.dtype)).reshape(n, grid_h * grid_w, self.width)
    cls = self.param("cls_token", nn.initializers.zeros, (self.width,), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.width)), tokens],
                        axis=1)
    for i in range(self.depth):
      x = _TransformerBlock(self.num_heads, self.mlp_ratio, self.dtype, self.param_dtype,
                            name=f"block{i + 1}")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="final_norm")(x)
    return x[:, 0].astype(jnp.float32)


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
    name: one of `MODELS` ('mlp', 'convnet', 'resnet18', 'resnet50', 'vit_tiny', 'vit_small').
    projection_dim: output dimension of the head (128 as in SimCLR).
    hidden_dim: hidden width of the head; None = the encoder's feature dimension.
    head_batch_norm: BN in the head; None = True for the conv encoders, False for 'mlp' (so
      the default MLP model has no BatchNorm at all and no 'batch_stats').
    bn_axis_name: mesh axis over which BN statistics are averaged (e.g. 'data' in shard_map).
    dtype: compute dtype of encoder and head (parameters stay float32).
    **encoder_kwargs: passed to the encoder (`hidden_sizes` for MLP, `widths` for ConvNet,
      `stage_sizes`/`widths` for ResNet18, `stage_sizes`/`widths`/`stem` for ResNet50,
      `patch_size` (and `depth`, `mlp_ratio`) for the ViTs).
  """
  _checks.choice("name", name, MODELS)
  _checks.positive_int("projection_dim", projection_dim)
  if hidden_dim is not None:
    _checks.positive_int("hidden_dim", hidden_dim)
  encoder: nn.Module
  if name == "mlp":
    encoder = MLP(dtype=dtype, **encoder_kwargs)
  elif name == "convnet":
    encoder = ConvNet(bn_axis_name=bn_axis_name, dtype=dtype, **encoder_kwargs)
  elif name == "resnet18":
    encoder = ResNet18(bn_axis_name=bn_axis_name, dtype=dtype, **encoder_kwargs)
  elif name == "resnet50":
    encoder = ResNet50(bn_axis_name=bn_axis_name, dtype=dtype, **encoder_kwargs)
  else:
    width, depth, heads = VIT_VARIANTS[name]
    encoder = ViT(**{"width": width, "depth": depth, "num_heads": heads, "dtype": dtype,
                     **encoder_kwargs})
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
