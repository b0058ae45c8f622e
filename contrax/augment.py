"""On-device image augmentation: pure `(key, image) -> image` ops, presets, batched views.

Images are float32 `[H, W, C]` in [0, 1] with C = 1 or 3 (`to_float` converts uint8
batches). Every op is a pure function of its arguments, jit/vmap-compatible with static
shapes, and follows torchvision's semantics (the SimCLR reference pipeline, Chen et al.
2020, arXiv 2002.05709, Appendix A):

    random resized crop -> [translation] -> horizontal flip -> colour jitter (p)
      -> grayscale (p) -> Gaussian blur (p) -> [additive noise]

Each random op is split into a sampler and a deterministic applier so that the applier can
be compared with a reference on fixed parameters: `crop_box` / `resized_crop`,
`jitter_params` / `color_jitter`, and `hflip`, `grayscale`, `adjust_*`, `gaussian_blur`.

`augment_batch` vmaps `augment_image` with per-sample keys `fold_in(key, sample_id)`, so a
sample's view depends only on the key and its global index, never on its position in the
batch or on how the batch is split across devices. `two_views` draws two independent views
from `fold_in(key, 0)` and `fold_in(key, 1)`; `multi_crop` draws SwAV/DINO's global and
local crops (view v from `fold_in(key, v)`, at static per-type sizes). `Augmentation` is a
leafless pytree (its fields are static), so `jax.jit(two_views)(get("simclr"), key, images,
ids)` works without `static_argnums` (a preset *name* is a string, which jit cannot take
as a traced argument).

Geometric ops (crop, translation, flip) are separable 1-D linear resamplings along height
and width, so inside `augment_image` they are fused into one pass (two taps per axis).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional, TypedDict, Union

import jax
import jax.numpy as jnp
import numpy as np

from contrax import _checks

__all__ = [
    "GRAY_WEIGHTS", "NUM_CROP_TRIES", "Augmentation", "check_jitter_strengths",
    "with_color_strength", "PRESETS", "get", "to_float", "default_kernel_size", "CROP_UNIFORMS",
    "crop_box", "resized_crop", "hflip", "grayscale", "adjust_brightness", "adjust_contrast",
    "adjust_saturation", "adjust_hue", "JITTER_UNIFORMS", "jitter_params", "color_jitter",
    "gaussian_blur", "augment_image", "augment_batch", "two_views", "MultiCrop", "multi_crop",
    "host_cropped_views",
]

GRAY_WEIGHTS = (0.299, 0.587, 0.114)   # ITU-R 601-2 luma, as PIL's convert("L")
NUM_CROP_TRIES = 10                    # torchvision RandomResizedCrop attempts


# ----------------------------------------------------------------------------- spec
@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Augmentation:
  """A composable augmentation spec; every op is off by default.

  Attributes:
    crop_scale: random resized crop area range as a fraction of the image, e.g.
      (0.08, 1.0); None = no crop.
    crop_ratio: range of the crop's aspect ratio w/h (sampled log-uniformly).
    translate: random translation by up to this many pixels along each axis, zero fill
      (pad-and-crop); 0 = off.
    flip_prob: probability of a horizontal flip.
    jitter: colour-jitter strengths (brightness, contrast, saturation, hue) with
      torchvision semantics: factors uniform in [max(0, 1-b), 1+b] for the first three,
      hue shift uniform in [-h, h] (h <= 0.5); None = no jitter.
    jitter_prob: probability of applying the jitter (all four ops, random order).
    gray_prob: probability of converting to grayscale (replicated to C channels).
    blur_prob: probability of a Gaussian blur.
    blur_sigma: range of the blur's standard deviation in pixels (uniform).
    blur_kernel_size: odd kernel size; None = about 10% of the image side (odd, >= 3).
    noise_std: standard deviation of additive Gaussian pixel noise (then clipped); 0 = off.
  """
  crop_scale: Optional[tuple[float, float]] = None
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  translate: int = 0
  flip_prob: float = 0.0
  jitter: Optional[tuple[float, float, float, float]] = None
  jitter_prob: float = 0.8
  gray_prob: float = 0.0
  blur_prob: float = 0.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  blur_kernel_size: Optional[int] = None
  noise_std: float = 0.0

  def __post_init__(self):
    def set_(name, value):
      object.__setattr__(self, name, value)

    if self.crop_scale is not None:
      set_("crop_scale", _check_range("crop_scale", self.crop_scale, 0.0, 1.0))
    set_("crop_ratio", _check_range("crop_ratio", self.crop_ratio, 0.0, math.inf))
    set_("translate", _checks.integer_at_least("translate", self.translate, 0))
    for name in ("flip_prob", "jitter_prob", "gray_prob", "blur_prob"):
      set_(name, _checks.in_range(name, getattr(self, name), 0.0, 1.0, include_high=True))
    if self.jitter is not None:
      set_("jitter", check_jitter_strengths(self.jitter))
    set_("blur_sigma", _check_range("blur_sigma", self.blur_sigma, 0.0, math.inf))
    if self.blur_kernel_size is not None:
      k = _checks.positive_int("blur_kernel_size", self.blur_kernel_size)
      if k % 2 == 0:
        raise ValueError(f"blur_kernel_size must be odd, got {k}")
      set_("blur_kernel_size", k)
    set_("noise_std", _checks.non_negative("noise_std", self.noise_std))


def _check_range(name: str, value, low: float, high: float) -> tuple[float, float]:
  """A pair (lo, hi) with low < lo <= hi <= high."""
  if not isinstance(value, (tuple, list)) or len(value) != 2:
    raise TypeError(f"{name} must be a pair (lo, hi), got {value!r}")
  lo = _checks.in_range(f"{name}[0]", value[0], low, high, include_low=False, include_high=True)
  hi = _checks.in_range(f"{name}[1]", value[1], low, high, include_low=False, include_high=True)
  if lo > hi:
    raise ValueError(f"{name} must satisfy lo <= hi, got {value!r}")
  return (lo, hi)


def check_jitter_strengths(strengths) -> tuple[float, float, float, float]:
  """(brightness, contrast, saturation, hue), each >= 0 and hue <= 0.5."""
  if not isinstance(strengths, (tuple, list)) or len(strengths) != 4:
    raise TypeError("jitter must be a 4-tuple (brightness, contrast, saturation, hue), "
                    f"got {strengths!r}")
  b, c, s = (_checks.non_negative(f"jitter[{i}]", v) for i, v in enumerate(strengths[:3]))
  h = _checks.in_range("jitter[3] (hue)", strengths[3], 0.0, 0.5, include_high=True)
  return (b, c, s, h)


def with_color_strength(aug: Augmentation, s: float) -> Augmentation:
  """SimCLR's colour-distortion strength s: jitter = (0.8s, 0.8s, 0.8s, 0.2s).

  Chen et al. 2020, Appendix A; s = 0.5 is the CIFAR-10 default, s = 1 the ImageNet one.
  The jitter probability and grayscale probability are kept as they are in `aug`.
  """
  s = _checks.in_range("s", s, 0.0, 2.5, include_high=True)
  return dataclasses.replace(aug, jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s))


class _Fields(TypedDict, total=False):
  """Some of `Augmentation`'s fields, typed so that `dataclasses.replace(aug, **fields)` checks;
  the groups below are disjoint, merged with `|` (one `**`: mypy cannot tell that two
  partial TypedDicts share no key)."""
  jitter: tuple[float, float, float, float]
  jitter_prob: float
  gray_prob: float
  blur_prob: float
  flip_prob: float


_CROP = Augmentation(crop_scale=(0.08, 1.0))
_JITTER = _Fields(jitter=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.8)   # SimCLR CIFAR, s = 0.5
_GRAY = _Fields(gray_prob=0.2)
_BLUR = _Fields(blur_prob=0.5)
_FLIP = _Fields(flip_prob=0.5)

PRESETS: dict[str, Augmentation] = {
    "none": Augmentation(),
    # SimCLR CIFAR-10 (no blur at 32x32).
    "simclr": dataclasses.replace(_CROP, **(_FLIP | _JITTER | _GRAY)),
    # 8x8 grayscale digits: no flip (it changes digits), mild zoom, intensity jitter, noise.
    "digits": Augmentation(crop_scale=(0.5, 1.0), crop_ratio=(3 / 4, 4 / 3),
                           jitter=(0.4, 0.4, 0.0, 0.0), jitter_prob=0.8, noise_std=0.05),
    # The augmentation study of Huang et al. 2023 ([P001], Tables 1 and 2). For Table 2's
    # strength sweep use `with_color_strength(get("crop+jitter"), s)`.
    "crop": _CROP,
    "crop+flip": dataclasses.replace(_CROP, **_FLIP),
    "crop+jitter": dataclasses.replace(_CROP, **_JITTER),
    "crop+blur": dataclasses.replace(_CROP, **_BLUR),
    "crop+blur+gray": dataclasses.replace(_CROP, **(_BLUR | _GRAY)),
    "crop+blur+gray+jitter": dataclasses.replace(_CROP, **(_BLUR | _GRAY | _JITTER)),
    "all": dataclasses.replace(_CROP, **(_FLIP | _JITTER | _GRAY | _BLUR)),
}


def get(name_or_spec: Union[str, Augmentation]) -> Augmentation:
  """A preset by name, or the given `Augmentation` unchanged."""
  if isinstance(name_or_spec, Augmentation):
    return name_or_spec
  if not isinstance(name_or_spec, str):
    raise TypeError(f"augmentation must be a preset name or an Augmentation, got {name_or_spec!r}")
  return PRESETS[_checks.choice("augmentation preset", name_or_spec, PRESETS)]


# ----------------------------------------------------------------------------- helpers
def to_float(images) -> jax.Array:
  """uint8 images -> float32 in [0, 1] (divided by 255); float images -> float32 as they are."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  if jnp.issubdtype(images.dtype, jnp.floating):
    return images.astype(jnp.float32)
  raise TypeError(f"images must be uint8 or floating point, got dtype {images.dtype}")


def _check_image(image) -> None:
  if np.ndim(image) != 3 or np.shape(image)[-1] not in (1, 3):
    raise ValueError(f"image must have shape [H, W, C] with C in (1, 3), got {np.shape(image)}")


def default_kernel_size(height: int, width: int) -> int:
  """About 10% of the shorter side, made odd, at least 3 (SimCLR: 23 at 224, 3 at 32)."""
  k = max(3, int(0.1 * min(height, width)))
  return k if k % 2 == 1 else k + 1


# ----------------------------------------------------------------------------- geometry
CROP_UNIFORMS = 2 * NUM_CROP_TRIES + 2   # uniforms consumed by one crop box


def crop_box(key: jax.Array, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Random resized crop box `(top, left, h, w)` (int32 scalars), torchvision's sampler.

  Up to 10 candidates: area = H W u, u ~ U(scale); aspect r = exp(U(log ratio));
  w = round(sqrt(area r)), h = round(sqrt(area / r)); the first candidate with
  0 < w <= W and 0 < h <= H wins, placed uniformly (top ~ U{0..H-h}, left ~ U{0..W-w}).
  If none fits, the central crop of the largest box whose aspect is clamped to `ratio`.
  All 10 candidates are drawn at once (static shapes) and the first valid one is selected.
  """
  height = _checks.positive_int("height", height)
  width = _checks.positive_int("width", width)
  scale = _check_range("scale", scale, 0.0, 1.0)
  ratio = _check_range("ratio", ratio, 0.0, math.inf)
  return _crop_box(jax.random.uniform(key, (CROP_UNIFORMS,)), height, width, scale, ratio)


def _crop_box(u: jax.Array, height: int, width: int, scale: tuple[float, float],
              ratio: tuple[float, float]):
  """`crop_box` driven by `CROP_UNIFORMS` U[0, 1) numbers `u`."""
  n = NUM_CROP_TRIES
  area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:n])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[n:2 * n])
  ws = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  hs = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  valid = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  first = jnp.argmax(valid)
  # The fallback depends only on static sizes.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fw, fh = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    fw, fh = int(round(height * ratio[1])), height
  else:
    fw, fh = width, height
  found = jnp.any(valid)
  h = jnp.where(found, hs[first], fh)
  w = jnp.where(found, ws[first], fw)
  # u < 1, but float rounding of u * n can reach n; keep the box inside.
  top_random = jnp.minimum(jnp.floor(u[2 * n] * (height - h + 1)).astype(jnp.int32), height - h)
  left_random = jnp.minimum(jnp.floor(u[2 * n + 1] * (width - w + 1)).astype(jnp.int32), width - w)
  top = jnp.where(found, top_random, (height - fh) // 2)
  left = jnp.where(found, left_random, (width - fw) // 2)
  return top, left, h, w


class _Taps(NamedTuple):
  """1-D linear resampling along one axis: `out[o] = w0[o] in[i0[o]] + w1[o] in[i1[o]]`."""
  i0: jax.Array
  i1: jax.Array
  w0: jax.Array
  w1: jax.Array


def _resize_taps(start, length, out_size: int) -> _Taps:
  """Bilinear taps resampling the window `[start, start + length)` to `out_size` pixels.

  Half-pixel centres (align_corners=False, as torchvision/PIL): output pixel o samples the
  window at s = (o + 0.5) length / out_size - 0.5, clamped to [0, length - 1], with weights
  1 - frac(s) and frac(s) on pixels floor(s) and min(floor(s) + 1, length - 1).
  """
  length_f = jnp.asarray(length, jnp.float32)
  src = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * length_f / out_size - 0.5
  src = jnp.clip(src, 0.0, length_f - 1.0)
  i0 = jnp.floor(src)
  frac = src - i0
  i0 = i0.astype(jnp.int32)
  return _Taps(start + i0, start + jnp.minimum(i0 + 1, length - 1), 1.0 - frac, frac)


def _shift_taps(taps: _Taps, offset) -> _Taps:
  """Translate the output by `offset` pixels: `out[o] = before[o - offset]`, zero outside."""
  size = taps.i0.shape[0]
  src = jnp.arange(size) - offset
  inside = ((src >= 0) & (src < size)).astype(jnp.float32)
  src = jnp.clip(src, 0, size - 1)
  return _Taps(taps.i0[src], taps.i1[src], taps.w0[src] * inside, taps.w1[src] * inside)


def _flip_taps(taps: _Taps) -> _Taps:
  return _Taps(*(t[::-1] for t in taps))


def _resample(image: jax.Array, rows: _Taps, cols: _Taps) -> jax.Array:
  """Apply `rows` along the height axis, then `cols` along the width axis (two gathers each;
  on CPU about 3x faster than the equivalent pair of interpolation-matrix products)."""
  image = (image[rows.i0] * rows.w0[:, None, None] + image[rows.i1] * rows.w1[:, None, None])
  return (image[:, cols.i0] * cols.w0[None, :, None] + image[:, cols.i1] * cols.w1[None, :, None])


def resized_crop(image: jax.Array, box, out_hw: Optional[tuple[int, int]] = None) -> jax.Array:
  """Crop `box = (top, left, h, w)` and resize it bilinearly to `out_hw` (default: input size).

  Bilinear with half-pixel centres (align_corners=False) and edge clamping inside the crop,
  i.e. crop-then-resize as torchvision/PIL; no antialiasing, which matches them whenever the
  output is at least the crop size (so in `augment_image` at the input size, and in
  `multi_crop`'s views whenever a crop's side is at most the view's side).
  """
  _check_image(image)
  height, width, _ = np.shape(image)
  out_h, out_w = (height, width) if out_hw is None else out_hw
  top, left, h, w = box
  rows = _resize_taps(top, h, _checks.positive_int("out_hw[0]", out_h))
  cols = _resize_taps(left, w, _checks.positive_int("out_hw[1]", out_w))
  return _resample(to_float(image), rows, cols)


def hflip(image: jax.Array) -> jax.Array:
  """Mirror left-right: `out[y, x] = image[y, W - 1 - x]`."""
  return image[:, ::-1, :]


# ----------------------------------------------------------------------------- colour
def _luma(image: jax.Array) -> jax.Array:
  """`0.299 R + 0.587 G + 0.114 B` as `[..., H, W, 1]` (C = 1: the image)."""
  if image.shape[-1] == 1:
    return image
  return (GRAY_WEIGHTS[0] * image[..., 0:1] + GRAY_WEIGHTS[1] * image[..., 1:2]
          + GRAY_WEIGHTS[2] * image[..., 2:3])


def grayscale(image: jax.Array) -> jax.Array:
  """`0.299 R + 0.587 G + 0.114 B`, replicated to the input's C channels (C = 1: identity)."""
  return jnp.broadcast_to(_luma(image), image.shape)


def _blend(image: jax.Array, other: jax.Array, factor) -> jax.Array:
  """`clip(factor image + (1 - factor) other, 0, 1)` (torchvision's _blend)."""
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor) -> jax.Array:
  """`clip(factor * image, 0, 1)`."""
  return jnp.clip(factor * image, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor) -> jax.Array:
  """Blend with the mean of the grayscale image: `clip(f x + (1 - f) mean(gray(x)), 0, 1)`."""
  # mean(luma) = luma(per-channel means): a plain reduction, then 3 multiply-adds.
  mean = _luma(jnp.mean(image, axis=(-3, -2), keepdims=True))
  return _blend(image, mean, factor)


def adjust_saturation(image: jax.Array, factor) -> jax.Array:
  """Blend with the grayscale image: `clip(f x + (1 - f) gray(x), 0, 1)` (C = 1: identity)."""
  if image.shape[-1] == 1:
    return image
  return _blend(image, _luma(image), factor)


def adjust_hue(image: jax.Array, factor) -> jax.Array:
  """Shift the HSV hue by `factor` (in [-0.5, 0.5], fraction of a turn): h -> (h + f) mod 1.

  Value V = max and chroma C = max - min are unchanged, so the HSV round trip reduces to
  the hue sextant h6 = 6h (standard piecewise formula) and, per channel n = 5, 3, 1 for
  R, G, B: out = V - C clip(min(k, 4 - k), 0, 1), k = (n + 6(h + f)) mod 6.
  C = 1: identity.
  """
  if image.shape[-1] == 1:
    return image
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  v = jnp.maximum(jnp.maximum(r, g), b)
  chroma = v - jnp.minimum(jnp.minimum(r, g), b)
  safe = jnp.where(chroma > 0, chroma, 1.0)
  h6 = jnp.where(v == r, (g - b) / safe,
                 jnp.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  h6 = h6 + 6.0 * factor
  out = []
  for n in (5.0, 3.0, 1.0):
    k = n + h6
    k = k - 6.0 * jnp.floor(k / 6.0)   # mod 6; floor is much faster than fmod on CPU
    out.append(v - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
  return jnp.clip(jnp.stack(out, axis=-1), 0.0, 1.0)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
JITTER_UNIFORMS = 2 * len(_JITTER_OPS)   # uniforms consumed by one jitter draw


def jitter_params(key: jax.Array, strengths) -> tuple[jax.Array, jax.Array]:
  """Sample torchvision ColorJitter parameters: `(order, factors)`.

  factors[0:3] ~ U[max(0, 1 - s), 1 + s] for brightness, contrast, saturation and
  factors[3] ~ U[-h, h] for hue; `order` is a uniformly random permutation of the indices
  (0 brightness, 1 contrast, 2 saturation, 3 hue) of the ops whose strength is > 0.
  """
  strengths = check_jitter_strengths(strengths)
  return _jitter_params(jax.random.uniform(key, (JITTER_UNIFORMS,)), strengths)


def _jitter_params(u: jax.Array, strengths):
  """`jitter_params` driven by `JITTER_UNIFORMS` U[0, 1) numbers `u`."""
  low = np.array([max(0.0, 1.0 - s) for s in strengths[:3]] + [-strengths[3]], np.float32)
  high = np.array([1.0 + s for s in strengths[:3]] + [strengths[3]], np.float32)
  factors = low + (high - low) * u[:4]
  active = np.array([i for i, s in enumerate(strengths) if s > 0], np.int32)
  # Sorting iid uniforms gives a uniformly random permutation.
  order = jnp.asarray(active)[jnp.argsort(u[4:4 + len(active)])]
  return order, factors


def color_jitter(image: jax.Array, order: jax.Array, factors: jax.Array) -> jax.Array:
  """Apply `_JITTER_OPS[order[0]]`, then `order[1]`, ... with `factors[op]` (static length)."""
  branches = [lambda x, f, op=op, i=i: op(x, f[i]) for i, op in enumerate(_JITTER_OPS)]
  for position in range(np.shape(order)[0]):
    image = jax.lax.switch(order[position], branches, image, factors)
  return image


def gaussian_blur(image: jax.Array, sigma, kernel_size: int) -> jax.Array:
  """Separable Gaussian blur with reflect padding (torchvision GaussianBlur).

  Kernel g[t] ∝ exp(-x_t² / (2 sigma²)), x_t = t - (k - 1)/2, t = 0..k-1, normalised to
  sum 1; padding mirrors without repeating the edge pixel (NumPy 'reflect').
  """
  _check_image(image)
  kernel_size = _checks.positive_int("kernel_size", kernel_size)
  radius = kernel_size // 2
  if kernel_size % 2 == 0 or radius >= min(image.shape[:2]):
    raise ValueError(f"kernel_size must be odd and < 2 * min(H, W) = {2 * min(image.shape[:2])}, "
                     f"got {kernel_size}")
  x = jnp.arange(kernel_size, dtype=jnp.float32) - radius
  weights = jnp.exp(-0.5 * jnp.square(x / sigma))
  weights = weights / jnp.sum(weights)
  for axis in (0, 1):
    size = image.shape[axis]
    # start: sum's default int 0 as a (weak-typed) Array, so that the sum is typed an Array.
    image = sum((weights[t] * jnp.take(image, _reflect_indices(size, t - radius), axis=axis)
                 for t in range(kernel_size)), start=jnp.asarray(0))
  return image


def _reflect_indices(size: int, offset: int) -> np.ndarray:
  """Static indices `o + offset` mirrored into [0, size) without repeating the edge."""
  idx = np.abs(np.arange(size) + offset)
  return np.where(idx > size - 1, 2 * (size - 1) - idx, idx)


# ----------------------------------------------------------------------------- pipeline
# Offsets into the per-image vector of uniforms (fixed, so that switching one op on or off
# leaves the others' randomness unchanged).
_U_CROP = 0
_U_SHIFT = _U_CROP + CROP_UNIFORMS
_U_FLIP = _U_SHIFT + 2
_U_JITTER = _U_FLIP + 1
_U_JITTER_APPLY = _U_JITTER + JITTER_UNIFORMS
_U_GRAY = _U_JITTER_APPLY + 1
_U_BLUR = _U_GRAY + 1
_NUM_UNIFORMS = _U_BLUR + 2


def augment_image(aug: Augmentation, key: jax.Array, image: jax.Array,
                  out_hw: Optional[tuple[int, int]] = None) -> jax.Array:
  """One augmented view of one image `[H, W, C]`; returns float32 in [0, 1] of shape
  `[*out_hw, C]` (default: the input's `[H, W, C]`).

  All scalar randomness comes from one vector of uniforms drawn from `key` (few RNG call
  sites: faster to compile); ops that are off cost nothing (decided statically from `aug`).
  With `out_hw`, the crop (or, without a crop, the whole image) is resized bilinearly to
  `out_hw`, and translation, blur and noise act on the resized view (multi-crop's small views).
  """
  aug = get(aug)
  _check_image(image)
  image = to_float(image)
  height, width, channels = image.shape
  out_h, out_w = (height, width) if out_hw is None else (
      _checks.positive_int("out_hw[0]", out_hw[0]), _checks.positive_int("out_hw[1]", out_hw[1]))
  k_uniform, k_noise = jax.random.split(key)
  u = jax.random.uniform(k_uniform, (_NUM_UNIFORMS,))

  flip = u[_U_FLIP] < aug.flip_prob
  if aug.crop_scale is not None or aug.translate > 0 or (out_h, out_w) != (height, width):
    # Crop, resize, translation and flip are fused into one resampling pass.
    if aug.crop_scale is not None:
      top, left, h, w = _crop_box(u[_U_CROP:_U_CROP + CROP_UNIFORMS], height, width,
                                  aug.crop_scale, aug.crop_ratio)
      rows, cols = _resize_taps(top, h, out_h), _resize_taps(left, w, out_w)
    else:
      rows, cols = _resize_taps(0, height, out_h), _resize_taps(0, width, out_w)
    if aug.translate > 0:
      span = 2 * aug.translate + 1
      dy, dx = jnp.floor(u[_U_SHIFT:_U_SHIFT + 2] * span).astype(jnp.int32) - aug.translate
      rows, cols = _shift_taps(rows, dy), _shift_taps(cols, dx)
    if aug.flip_prob > 0:
      cols = _Taps(*(jnp.where(flip, f, t) for f, t in zip(_flip_taps(cols), cols)))
    image = _resample(image, rows, cols)
  elif aug.flip_prob > 0:
    image = jnp.where(flip, hflip(image), image)

  if aug.jitter is not None and aug.jitter_prob > 0:
    strengths = aug.jitter if channels == 3 else (aug.jitter[0], aug.jitter[1], 0.0, 0.0)
    if any(s > 0 for s in strengths):
      params = _jitter_params(u[_U_JITTER:_U_JITTER + JITTER_UNIFORMS], strengths)
      image = jnp.where(u[_U_JITTER_APPLY] < aug.jitter_prob, color_jitter(image, *params), image)

  if aug.gray_prob > 0 and channels == 3:
    image = jnp.where(u[_U_GRAY] < aug.gray_prob, grayscale(image), image)

  if aug.blur_prob > 0:
    lo, hi = aug.blur_sigma
    sigma = lo + (hi - lo) * u[_U_BLUR]
    size = aug.blur_kernel_size or default_kernel_size(out_h, out_w)
    image = jnp.where(u[_U_BLUR + 1] < aug.blur_prob, gaussian_blur(image, sigma, size), image)

  if aug.noise_std > 0:
    noise = aug.noise_std * jax.random.normal(k_noise, image.shape)
    image = jnp.clip(image + noise, 0.0, 1.0)
  return image


def augment_batch(aug: Union[str, Augmentation], key: jax.Array, images,
                  sample_ids) -> jax.Array:
  """Augment `[n, H, W, C]` images (uint8 or float) with per-sample keys; float32 in [0, 1].

  Sample i uses `fold_in(key, sample_ids[i])`, where `sample_ids` are global sample indices
  (int `[n]`): its view does not depend on its position in the batch or on sharding.
  """
  aug = get(aug)
  images, sample_ids = _check_batch(images, sample_ids)
  return _augment_with_keys(aug, _sample_keys(key, sample_ids), images)


def two_views(aug: Union[str, Augmentation], key: jax.Array, images,
              sample_ids) -> tuple[jax.Array, jax.Array]:
  """Two independent views of each image: `augment_batch` with `fold_in(key, 0)` and
  `fold_in(key, 1)`, vmapped over the two views so the pipeline is traced and compiled once.

  `images` may also be `[n, 2, H, W, C]`: two crops per image already cut on the host
  (`contrax.loader`, for images of varying size); view v is then crop v with the rest of
  `aug` (its `crop_scale` is skipped: the host did the random-resized crop).
  """
  if np.ndim(images) == 5:
    host_views = host_cropped_views(aug, key, images, sample_ids)
    if len(host_views) != 2:
      raise ValueError(f"two_views takes [n, 2, H, W, C] host crops, got {len(host_views)} "
                       f"crops per image (shape {np.shape(images)})")
    return host_views[0], host_views[1]
  aug = get(aug)
  images, sample_ids = _check_batch(images, sample_ids)
  view_keys = jnp.stack([jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)])
  views = jax.vmap(lambda k: _augment_with_keys(aug, _sample_keys(k, sample_ids), images))(
      view_keys)
  return views[0], views[1]


def host_cropped_views(aug: Union[str, Augmentation], key: jax.Array, images,
                       sample_ids) -> tuple[jax.Array, ...]:
  """The V views of `[n, V, H, W, C]` crops cut on the host: view v = `augment_batch` of
  crop v with `fold_in(key, v)` and `aug` without its crop (the host cut it); the V views are
  vmapped so the pipeline is traced once. Returns a tuple of V float32 `[n, H, W, C]`."""
  aug = dataclasses.replace(get(aug), crop_scale=None)
  if np.ndim(images) != 5:
    raise ValueError(f"host crops must have shape [n, V, H, W, C], got {np.shape(images)}")
  num_views = np.shape(images)[1]
  by_view = jnp.moveaxis(jnp.asarray(images), 1, 0)  # [V, n, H, W, C]
  _check_batch(by_view[0], sample_ids)
  sample_ids = jnp.asarray(sample_ids)
  view_keys = jnp.stack([jax.random.fold_in(key, v) for v in range(num_views)])
  views = jax.vmap(lambda k, x: _augment_with_keys(aug, _sample_keys(k, sample_ids),
                                                   to_float(x)))(view_keys, by_view)
  return tuple(views[v] for v in range(num_views))


def _check_batch(images, sample_ids):
  if np.ndim(images) != 4 or np.shape(images)[-1] not in (1, 3):
    raise ValueError(f"images must have shape [n, H, W, C] with C in (1, 3), "
                     f"got {np.shape(images)}")
  if np.shape(sample_ids) != np.shape(images)[:1]:
    raise ValueError(f"sample_ids must have shape [n] = {np.shape(images)[:1]}, "
                     f"got {np.shape(sample_ids)}")
  sample_ids = jnp.asarray(sample_ids)
  if not jnp.issubdtype(sample_ids.dtype, jnp.integer):
    raise TypeError(f"sample_ids must be integers, got dtype {sample_ids.dtype}")
  return to_float(images), sample_ids


def _sample_keys(key: jax.Array, sample_ids: jax.Array) -> jax.Array:
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, sample_ids)


def _augment_with_keys(aug: Augmentation, keys: jax.Array, images: jax.Array) -> jax.Array:
  return jax.vmap(lambda k, x: augment_image(aug, k, x))(keys, images)


# ----------------------------------------------------------------------------- multi-crop
@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class MultiCrop:
  """Multi-crop views (Caron et al. 2020, "Unsupervised learning of visual features by
  contrasting cluster assignments", section 3.2): `num_global` crops at `global_size` pixels
  with random-resized-crop area in `global_scale`, then `num_local` crops at `local_size`
  pixels with area in `local_scale`.

  Defaults are SwAV's ImageNet ones (`main_swav.py`: 2 x 224 + 6 x 96, scales (0.14, 1) and
  (0.05, 0.14)) except the sizes: None keeps the input's size (an MLP encoder needs it);
  e.g. `global_size=224, local_size=96` on ImageNet, `32` and `16` on CIFAR-10 with a
  convolutional encoder.

  Attributes:
    num_global, num_local: numbers of crops of each type (num_global >= 1, num_local >= 0).
    global_size, local_size: side of the square views in pixels; None = the input's H x W.
    global_scale, local_scale: crop area ranges as fractions of the image, (lo, hi) in (0, 1].
  """
  num_global: int = 2
  global_size: Optional[int] = None
  global_scale: tuple[float, float] = (0.14, 1.0)
  num_local: int = 6
  local_size: Optional[int] = None
  local_scale: tuple[float, float] = (0.05, 0.14)

  def __post_init__(self):
    def set_(name, value):
      object.__setattr__(self, name, value)

    set_("num_global", _checks.positive_int("num_global", self.num_global))
    set_("num_local", _checks.integer_at_least("num_local", self.num_local, 0))
    for name in ("global_size", "local_size"):
      if getattr(self, name) is not None:
        set_(name, _checks.positive_int(name, getattr(self, name)))
    set_("global_scale", _check_range("global_scale", self.global_scale, 0.0, 1.0))
    set_("local_scale", _check_range("local_scale", self.local_scale, 0.0, 1.0))

  @property
  def num_views(self) -> int:
    return self.num_global + self.num_local


def multi_crop(aug: Union[str, Augmentation], crops: MultiCrop, key: jax.Array, images,
               sample_ids) -> tuple[jax.Array, ...]:
  """`crops.num_global` global views, then `crops.num_local` local views of each image.

  View v (v = 0 .. num_global + num_local - 1, globals first) of sample i is
  `augment_image(aug with crop_scale = the type's scale, fold_in(fold_in(key, v),
  sample_ids[i]), image_i, out_hw = the type's size)`, as `two_views` derives its two views:
  independent of the sample's place in the batch and of the device count. With
  `global_scale = aug.crop_scale` and `global_size=None`, the first two views are `two_views`'.
  Each type's views are vmapped over their view keys (one traced pipeline per type).

  Returns a tuple of float32 arrays `[n, S, S, C]` (S: the type's size; the input's H x W
  when the size is None).
  """
  aug = get(aug)
  if not isinstance(crops, MultiCrop):
    raise TypeError(f"crops must be a MultiCrop, got {crops!r}")
  images, sample_ids = _check_batch(images, sample_ids)
  views: list[jax.Array] = []
  first = 0
  for count, size, scale in ((crops.num_global, crops.global_size, crops.global_scale),
                             (crops.num_local, crops.local_size, crops.local_scale)):
    if count == 0:
      continue
    typed = dataclasses.replace(aug, crop_scale=scale)
    out_hw = None if size is None else (size, size)
    view_keys = jnp.stack([jax.random.fold_in(key, v) for v in range(first, first + count)])
    batch = jax.vmap(lambda k: jax.vmap(
        lambda kk, x: augment_image(typed, kk, x, out_hw))(_sample_keys(k, sample_ids), images))(
            view_keys)
    views.extend(batch[j] for j in range(count))
    first += count
  return tuple(views)
