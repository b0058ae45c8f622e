"""Host-side crops of variable-size images to the fixed training resolution (Pillow).

Shapes must be static on device, so a dataset of photos of every size is cut to one size on
the host: for training, SimCLR's random-resized crop (Chen et al. 2020, "A Simple Framework
for Contrastive Learning of Visual Representations", Appendix A; torchvision's
`RandomResizedCrop`), `num_crops` independent crops per image from one decode; for
evaluation, resize + centre crop. Everything else (flip, colour, blur, solarise) stays on
device (`contrax.augment`).

Random-resized crop of an `H x W` image, as torchvision's `RandomResizedCrop.get_params`
defines it: up to 10 attempts of

    target area  a ~ U[s_lo, s_hi] * H * W
    aspect ratio r = exp(u), u ~ U[log r_lo, log r_hi]      (r = w / h, log-uniform)
    w = round(sqrt(a r)), h = round(sqrt(a / r))

accepting the first with `0 < w <= W` and `0 < h <= H`, at a uniform position (top ~
U{0..H-h}, left ~ U{0..W-w}); after 10 failures, the centre crop of the whole image with the
aspect ratio clamped to `[r_lo, r_hi]`. The box is then resized to `size x size` with
Pillow's antialiased bilinear filter (what torchvision's resize does on PIL images).

Decoding at reduced size: a JPEG can be decoded at 1/2, 1/4 or 1/8 of its size for much less
work (Pillow's `Image.draft`, libjpeg's DCT scaling). The image is decoded at the smallest
such scale at which every crop box still covers at least `size` pixels along each side, so no
crop is upsampled from fewer pixels than the full decode would give it; the boxes are mapped
into the reduced image with sub-pixel precision. Other formats (PNG) are decoded in full.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from contrax import _checks

__all__ = [
    "NUM_ATTEMPTS", "EVAL_CROP_FRACTION", "check_range", "random_resized_box", "center_box",
    "resize_box", "random_resized_crops", "center_crop",
]

NUM_ATTEMPTS = 10          # torchvision RandomResizedCrop
EVAL_CROP_FRACTION = 0.875  # resize to size / 0.875 then centre-crop size (224 of 256)

Box = tuple[int, int, int, int]  # (top, left, height, width)


def check_range(name: str, value, low: float, high: float) -> tuple[float, float]:
  """A pair `(lo, hi)` with `low < lo <= hi <= high`."""
  if not isinstance(value, (tuple, list)) or len(value) != 2:
    raise TypeError(f"{name} must be a pair (lo, hi), got {value!r}")
  lo = _checks.in_range(f"{name}[0]", value[0], low, high, include_low=False, include_high=True)
  hi = _checks.in_range(f"{name}[1]", value[1], low, high, include_low=False, include_high=True)
  if lo > hi:
    raise ValueError(f"{name} must satisfy lo <= hi, got {tuple(value)!r}")
  return float(lo), float(hi)


def random_resized_box(rng: np.random.Generator, height: int, width: int,
                       scale: Sequence[float] = (0.08, 1.0),
                       ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Box:
  """`(top, left, h, w)` of one random-resized crop of a `height x width` image (module
  docstring; torchvision's `RandomResizedCrop.get_params` with NumPy's generator)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(NUM_ATTEMPTS):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def center_box(height: int, width: int, fraction: float = EVAL_CROP_FRACTION) -> Box:
  """The centred square of side `fraction * min(height, width)`: what torchvision's
  `Resize(round(size / fraction))` then `CenterCrop(size)` keeps of the image."""
  side = max(1, int(round(fraction * min(height, width))))
  return (height - side) // 2, (width - side) // 2, side, side


def _rgb(image):
  """`image` in RGB (grayscale, palette, CMYK and alpha images converted; decodes it)."""
  return image if image.mode == "RGB" else image.convert("RGB")


def resize_box(image, box: Box, size: int) -> np.ndarray:
  """uint8 `[size, size, 3]`: the `box` of a decoded PIL image resized with Pillow's
  antialiased bilinear filter (= torchvision's crop then resize on PIL images)."""
  from PIL import Image
  top, left, h, w = box
  crop = _rgb(image).crop((left, top, left + w, top + h))
  return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


def _decode_for_boxes(image, boxes: Sequence[Box], size: int):
  """`(decoded RGB image, fx, fy)`: `image` decoded at the smallest JPEG draft scale that keeps
  every box at least `size` pixels on each side; `fx, fy` map original to decoded pixels."""
  width, height = image.size
  if image.format == "JPEG":
    # The largest reduction every box allows (1 = full size).
    factor = max(max(size / w, size / h) for _, _, h, w in boxes)
    if factor < 1:
      image.draft(None, (math.ceil(width * factor), math.ceil(height * factor)))
  image = _rgb(image)
  return image, image.size[0] / width, image.size[1] / height


def _resize_scaled_box(image, box: Box, fx: float, fy: float, size: int) -> np.ndarray:
  """`box` (original pixels) of the decoded `image` (scaled by fx, fy) resized to `size`."""
  from PIL import Image
  top, left, h, w = box
  x0, y0, x1, y1 = left * fx, top * fy, (left + w) * fx, (top + h) * fy
  if fx == 1 and fy == 1:
    return resize_box(image, box, size)
  # Crop to the enclosing integer box (as torchvision crops first), then resample the exact
  # sub-pixel box inside it.
  ix0, iy0 = int(math.floor(x0)), int(math.floor(y0))
  ix1 = min(image.size[0], int(math.ceil(x1)))
  iy1 = min(image.size[1], int(math.ceil(y1)))
  crop = image.crop((ix0, iy0, ix1, iy1))
  inner = (x0 - ix0, y0 - iy0, min(x1, ix1) - ix0, min(y1, iy1) - iy0)
  return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR, box=inner))


def random_resized_crops(image, rng: np.random.Generator, *, size: int, num_crops: int = 2,
                         scale: Sequence[float] = (0.08, 1.0),
                         ratio: Sequence[float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """uint8 `[num_crops, size, size, 3]`: independent random-resized crops of one opened (not
  yet decoded) PIL image, all cut from a single decode at reduced size where JPEG allows.

  Boxes are drawn on the original size (read from the header) with `random_resized_box`, in
  order, from `rng`.
  """
  width, height = image.size
  boxes = [random_resized_box(rng, height, width, scale, ratio) for _ in range(num_crops)]
  decoded, fx, fy = _decode_for_boxes(image, boxes, size)
  return np.stack([_resize_scaled_box(decoded, b, fx, fy, size) for b in boxes])


def center_crop(image, *, size: int, fraction: float = EVAL_CROP_FRACTION) -> np.ndarray:
  """uint8 `[size, size, 3]`: the evaluation view of one opened PIL image (`center_box`
  resized to `size`, decoded at reduced size where JPEG allows)."""
  width, height = image.size
  box = center_box(height, width, fraction)
  decoded, fx, fy = _decode_for_boxes(image, [box], size)
  return _resize_scaled_box(decoded, box, fx, fy, size)
