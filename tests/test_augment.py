"""Tests for contrax.augment against float64 NumPy references, colorsys and PIL."""
from __future__ import annotations

import colorsys
import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from contrax import augment as A

GRAY = np.array([0.299, 0.587, 0.114])
# Jitted once at module level so that tests share compilations (eager vmap is slow).
augment_image = jax.jit(A.augment_image)
augment_batch = jax.jit(A.augment_batch)
two_views = jax.jit(A.two_views)
resized_crop = jax.jit(A.resized_crop, static_argnums=2)
gaussian_blur = jax.jit(A.gaussian_blur, static_argnums=2)


def _image(shape=(12, 10, 3), seed=0):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


# ----------------------------------------------------------------------------- references
def np_gray(x):
  x = np.asarray(x, np.float64)
  return x if x.shape[-1] == 1 else (x @ GRAY)[..., None]


def np_blend(x, y, f):
  return np.clip(f * np.asarray(x, np.float64) + (1 - f) * y, 0, 1)


def np_brightness(x, f):
  return np_blend(x, 0.0, f)


def np_contrast(x, f):
  return np_blend(x, np_gray(x).mean(), f)


def np_saturation(x, f):
  return np_blend(x, np_gray(x), f)


def np_hue(x, f):
  out = np.empty(x.shape)
  for idx in np.ndindex(x.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*map(float, x[idx]))
    out[idx] = colorsys.hsv_to_rgb((h + f) % 1.0, s, v)
  return out


NP_JITTER = (np_brightness, np_contrast, np_saturation, np_hue)


def np_bilinear_matrix(n_in, n_out):
  """Half-pixel-centre bilinear weights with edge clamping, `[n_out, n_in]`."""
  m = np.zeros((n_out, n_in))
  for o in range(n_out):
    s = min(max((o + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
    i0 = int(math.floor(s))
    m[o, i0] += 1 - (s - i0)
    m[o, min(i0 + 1, n_in - 1)] += s - i0
  return m


def np_resized_crop(x, box, out_hw):
  top, left, h, w = box
  crop = np.asarray(x, np.float64)[top:top + h, left:left + w]
  return np.einsum("oy,yxc,px->opc", np_bilinear_matrix(h, out_hw[0]), crop,
                   np_bilinear_matrix(w, out_hw[1]))


def np_blur(x, sigma, k):
  r = k // 2
  t = np.arange(k) - r
  g = np.exp(-t ** 2 / (2 * sigma ** 2))
  g /= g.sum()
  x = np.asarray(x, np.float64)
  p = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
  hh, ww = x.shape[:2]
  rows = sum(g[i] * p[i:i + hh] for i in range(k))
  return sum(g[j] * rows[:, j:j + ww] for j in range(k))


def np_crop_box(rng, height, width, scale, ratio):
  """torchvision RandomResizedCrop.get_params, transcribed with a NumPy generator."""
  for _ in range(10):
    target = height * width * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
  if width / height < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif width / height > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


# ----------------------------------------------------------------------------- single ops
def test_to_float():
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  out = A.to_float(x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, x / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(A.to_float(x / 255.0), (x / 255.0).astype(np.float32))
  with pytest.raises(TypeError, match="uint8 or floating"):
    A.to_float(x.astype(np.int32))


def test_hflip_and_grayscale():
  x = _image()
  np.testing.assert_array_equal(A.hflip(x), x[:, ::-1])
  np.testing.assert_allclose(A.grayscale(x), np.repeat(np_gray(x), 3, axis=-1), atol=1e-6)
  one = _image((5, 4, 1))
  np.testing.assert_array_equal(A.grayscale(one), one)


@pytest.mark.parametrize("factor", [0.0, 0.4, 1.0, 1.7])
@pytest.mark.parametrize("channels", [1, 3])
def test_brightness_contrast_saturation(factor, channels):
  x = _image((6, 7, channels), seed=1)
  np.testing.assert_allclose(A.adjust_brightness(x, factor), np_brightness(x, factor), atol=1e-6)
  np.testing.assert_allclose(A.adjust_contrast(x, factor), np_contrast(x, factor), atol=1e-6)
  expected = x if channels == 1 else np_saturation(x, factor)
  np.testing.assert_allclose(A.adjust_saturation(x, factor), expected, atol=1e-6)


@pytest.mark.parametrize("factor", [-0.5, -0.27, 0.0, 0.1, 0.45])
def test_hue_matches_colorsys(factor):
  x = _image((5, 6, 3), seed=2)
  # Edge cases: grey pixels (no hue), ties for the max channel, pure primaries, black/white.
  x[0, :6] = [[0.3, 0.3, 0.3], [0.7, 0.7, 0.2], [0.2, 0.7, 0.7], [1, 0, 0], [0, 0, 0], [1, 1, 1]]
  np.testing.assert_allclose(A.adjust_hue(x, factor), np_hue(x, factor), atol=2e-6)


def test_color_jitter_applies_ops_in_order():
  x = _image((6, 5, 3), seed=3)
  factors = np.array([1.3, 0.6, 1.5, 0.2], np.float32)
  for order in [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1), (1, 3)]:
    expected = x
    for op in order:
      expected = NP_JITTER[op](expected, float(factors[op]))
    out = jax.jit(A.color_jitter)(x, jnp.array(order), factors)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_jitter_params_ranges_and_uniform_order():
  strengths = (0.4, 0.3, 0.9, 0.1)
  keys = jax.random.split(jax.random.key(0), 2400)
  orders, factors = jax.jit(jax.vmap(lambda k: A.jitter_params(k, strengths)))(keys)
  orders, factors = np.asarray(orders), np.asarray(factors)
  low = [0.6, 0.7, 0.1, -0.1]
  high = [1.4, 1.3, 1.9, 0.1]
  assert np.all(factors >= low) and np.all(factors <= high)
  # Uniform factors: mean at the mid-point (sd of the mean ~ width / sqrt(12 n)).
  np.testing.assert_allclose(factors.mean(0), np.add(low, high) / 2,
                             atol=5 * (np.subtract(high, low) / math.sqrt(12 * 2400)).max())
  assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
  counts = np.array([np.sum(np.all(orders == p, axis=1))
                     for p in itertools.permutations(range(4))])
  chi2 = np.sum((counts - 100.0) ** 2 / 100.0)   # 23 d.o.f.: mean 23, sd 6.8
  assert chi2 < 60, counts
  # Zero strengths are left out of the order.
  order, _ = A.jitter_params(jax.random.key(1), (0.4, 0.0, 0.0, 0.1))
  assert sorted(np.asarray(order).tolist()) == [0, 3]


@pytest.mark.parametrize("sigma,k", [(0.1, 3), (0.8, 3), (1.7, 5), (2.0, 7)])
def test_gaussian_blur(sigma, k):
  x = _image((9, 8, 3), seed=4)
  np.testing.assert_allclose(gaussian_blur(x, sigma, k), np_blur(x, sigma, k), atol=1e-6)
  with pytest.raises(ValueError, match="kernel_size"):
    A.gaussian_blur(x, sigma, 4)
  assert A.default_kernel_size(32, 32) == 3 and A.default_kernel_size(224, 224) == 23


@pytest.mark.parametrize("box,out_hw", [((0, 0, 12, 10), None), ((2, 3, 5, 4), None),
                                        ((0, 0, 1, 1), None), ((5, 1, 7, 9), None),
                                        ((3, 2, 4, 6), (20, 15))])
def test_resized_crop(box, out_hw):
  x = _image((12, 10, 3), seed=5)
  out_shape = (12, 10) if out_hw is None else out_hw
  out = np.asarray(resized_crop(x, box, out_hw))
  np.testing.assert_allclose(out, np_resized_crop(x, box, out_shape), atol=1e-6)
  # Peer check: PIL crop-then-resize (what torchvision does on PIL images).
  top, left, h, w = box
  for c in range(3):
    pil = Image.fromarray(x[..., c], mode="F").crop((left, top, left + w, top + h))
    pil = np.asarray(pil.resize(out_shape[::-1], Image.BILINEAR))
    np.testing.assert_allclose(out[..., c], pil, atol=1e-5)
  if box == (0, 0, 12, 10):
    np.testing.assert_allclose(out, x, atol=1e-7)


def _two_sample_close(a, b, sds=5.0):
  """Means of two iid samples agree within `sds` standard errors."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  se = math.sqrt(a.var() / a.size + b.var() / b.size) + 1e-12
  assert abs(a.mean() - b.mean()) < sds * se, (a.mean(), b.mean(), se)


@pytest.mark.parametrize("height,width,scale,ratio", [
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    (24, 40, (0.3, 1.0), (1 / 3, 3.0)),   # non-square, frequent rejections
])
def test_crop_box_distribution(height, width, scale, ratio):
  n = 4000
  keys = jax.random.split(jax.random.key(3), n)
  boxes = jax.jit(jax.vmap(lambda k: A.crop_box(k, height, width, scale, ratio)))(keys)
  top, left, h, w = (np.asarray(b) for b in boxes)
  assert np.all((h >= 1) & (w >= 1) & (top >= 0) & (left >= 0))
  assert np.all((top + h <= height) & (left + w <= width))
  rng = np.random.default_rng(0)
  ref = np.array([np_crop_box(rng, height, width, scale, ratio) for _ in range(n)])
  rt, rl, rh, rw = ref.T
  for ours, theirs in [(h, rh), (w, rw), (h * w, rh * rw), (np.log(w / h), np.log(rw / rh)),
                       (top, rt), (left, rl), (h == height, rh == height)]:
    _two_sample_close(ours, theirs)
  # Placement is uniform over the free range: top / (H - h) averages 1/2.
  free = height - h > 0
  _two_sample_close(top[free] / (height - h[free]), rt[rh < height] / (height - rh[rh < height]))


@pytest.mark.parametrize("ratio", [(5.0, 10.0), (0.1, 0.2)])
def test_crop_box_fallback_is_torchvision_central_crop(ratio):
  expected = np_crop_box(np.random.default_rng(0), 32, 32, (0.9, 1.0), ratio)
  got = jax.jit(lambda k: A.crop_box(k, 32, 32, (0.9, 1.0), ratio))(jax.random.key(0))
  assert tuple(int(v) for v in got) == tuple(int(v) for v in expected)


# ----------------------------------------------------------------------------- pipeline
def _aug_one(aug, image, seed=0):
  return np.asarray(augment_image(aug, jax.random.key(seed), image))


def test_ops_switched_fully_on_or_off():
  x = _image((10, 10, 3), seed=6)
  assert np.array_equal(_aug_one(A.get("none"), x), x)
  assert np.array_equal(_aug_one(A.Augmentation(jitter=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.0), x), x)
  np.testing.assert_array_equal(_aug_one(A.Augmentation(flip_prob=1.0), x), x[:, ::-1])
  np.testing.assert_allclose(_aug_one(A.Augmentation(gray_prob=1.0), x),
                             np.repeat(np_gray(x), 3, -1), atol=1e-6)
  full_crop = A.Augmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
  np.testing.assert_allclose(_aug_one(full_crop, x), x, atol=1e-7)
  flipped = dataclasses.replace(full_crop, flip_prob=1.0)   # fused crop+flip path
  np.testing.assert_allclose(_aug_one(flipped, x), x[:, ::-1], atol=1e-7)
  blur = A.Augmentation(blur_prob=1.0, blur_sigma=(1.3, 1.3), blur_kernel_size=5)
  np.testing.assert_allclose(_aug_one(blur, x), np_blur(x, 1.3, 5), atol=1e-6)


def test_translate_is_a_zero_filled_shift():
  x = _image((8, 9, 1), seed=7)
  aug = A.Augmentation(translate=2)
  seen = set()
  for seed in range(12):
    out = _aug_one(aug, x, seed)
    matches = []
    for dy, dx in itertools.product(range(-2, 3), repeat=2):
      shifted = np.zeros_like(x)
      shifted[max(dy, 0):8 + min(dy, 0), max(dx, 0):9 + min(dx, 0)] = \
          x[max(-dy, 0):8 - max(dy, 0), max(-dx, 0):9 - max(dx, 0)]
      if np.allclose(out, shifted, atol=1e-7):
        matches.append((dy, dx))
    assert len(matches) == 1, matches
    seen.add(matches[0])
  assert len(seen) > 3


def test_flip_probability():
  x = _image((4, 6, 1), seed=8)
  out = augment_batch(A.Augmentation(flip_prob=0.5), jax.random.key(1),
                        np.repeat(x[None], 400, 0), jnp.arange(400))
  flipped = np.all(np.asarray(out) == x[:, ::-1], axis=(1, 2, 3))
  kept = np.all(np.asarray(out) == x, axis=(1, 2, 3))
  assert np.all(flipped | kept)
  assert 0.4 < flipped.mean() < 0.6   # sd 0.025


@pytest.mark.parametrize("name,shape", [("simclr", (6, 16, 16, 3)), ("all", (6, 16, 16, 3)),
                                        ("digits", (6, 8, 8, 1))])
def test_presets_dtype_range_shape_and_determinism(name, shape):
  images = np.random.default_rng(9).integers(0, 256, shape, dtype=np.uint8)
  ids = jnp.arange(shape[0])
  v1, v2 = two_views(A.get(name), jax.random.key(0), images, ids)
  for v in (v1, v2):
    assert v.dtype == jnp.float32 and v.shape == shape
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
  assert not np.allclose(v1, v2)   # independent views
  again = two_views(A.get(name), jax.random.key(0), images, ids)
  np.testing.assert_array_equal(again[0], v1)
  np.testing.assert_array_equal(again[1], v2)
  other = two_views(A.get(name), jax.random.key(1), images, ids)
  assert not np.allclose(other[0], v1)


def test_key_derivation():
  """View v of sample i uses fold_in(fold_in(key, v), sample_ids[i])."""
  aug = A.get("digits")
  images = np.random.default_rng(11).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
  ids = jnp.array([7, 3, 12, 0, 1, 2])
  key = jax.random.key(2)
  views = two_views(aug, key, images, ids)
  for v in (0, 1):
    view_key = jax.random.fold_in(key, v)
    np.testing.assert_allclose(augment_batch(aug, view_key, images, ids), views[v], atol=1e-6)
    np.testing.assert_allclose(augment_image(aug, jax.random.fold_in(view_key, 12), images[2]),
                               views[v][2], atol=1e-6)


def test_batch_result_independent_of_position_and_split():
  aug = A.get("all")
  rng = np.random.default_rng(10)
  images = rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8)
  ids = jnp.arange(100, 108)
  key = jax.random.key(5)
  full = np.asarray(augment_batch(aug, key, images, ids))
  # The first half of this device's batch, next to samples another split would put there.
  mixed_images = np.concatenate([images[:4], rng.integers(0, 256, (4, 12, 12, 3), np.uint8)])
  mixed_ids = jnp.concatenate([ids[:4], jnp.arange(500, 504)])
  mixed = np.asarray(augment_batch(aug, key, mixed_images, mixed_ids))
  np.testing.assert_allclose(mixed[:4], full[:4], atol=1e-6)
  assert not np.allclose(mixed[4:], full[4:])
  perm = rng.permutation(8)
  np.testing.assert_allclose(augment_batch(aug, key, images[perm], ids[perm]), full[perm],
                             atol=1e-6)


def test_presets_and_errors():
  assert A.get("simclr") == A.Augmentation(crop_scale=(0.08, 1.0), flip_prob=0.5,
                                           jitter=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.8,
                                           gray_prob=0.2)
  assert A.get("digits").flip_prob == 0.0
  for name in ("none", "crop", "crop+flip", "crop+jitter", "crop+blur+gray+jitter", "all"):
    assert name in A.PRESETS
  spec = A.Augmentation(flip_prob=0.3)
  assert A.get(spec) is spec
  with pytest.raises(ValueError, match="simclr"):
    A.get("simclr2")
  assert A.with_color_strength(A.get("crop"), 0.5).jitter == pytest.approx((0.4, 0.4, 0.4, 0.1))
  assert A.with_color_strength(A.get("crop"), 1.0).jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))
  for bad, match in [(dict(crop_scale=(0.0, 1.0)), "crop_scale"),
                     (dict(crop_scale=(0.9, 0.5)), "crop_scale"),
                     (dict(flip_prob=1.5), "flip_prob"),
                     (dict(jitter=(0.4, 0.4, 0.4, 0.6)), "hue"),
                     (dict(blur_kernel_size=4), "blur_kernel_size"),
                     (dict(translate=-1), "translate")]:
    with pytest.raises(ValueError, match=match):
      A.Augmentation(**bad)
  with pytest.raises(ValueError, match="sample_ids"):
    A.augment_batch("none", jax.random.key(0), np.zeros((4, 8, 8, 3), np.uint8), jnp.arange(3))
  with pytest.raises(ValueError, match="images"):
    A.augment_batch("none", jax.random.key(0), np.zeros((4, 8, 8, 2), np.uint8), jnp.arange(4))
