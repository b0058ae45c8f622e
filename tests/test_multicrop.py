"""Multi-crop views (contrax.augment.multi_crop): shapes, per-crop keys derived as two_views',
independence from the batch position, and the crop scales of each crop type."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrax import augment as A

multi_crop = jax.jit(A.multi_crop)
augment_image = jax.jit(A.augment_image, static_argnums=3)
AUG = A.Augmentation(crop_scale=(0.08, 1.0), flip_prob=0.5, noise_std=0.05)
# Global crops at the input size with the augmentation's own scale (so they are two_views'),
# local crops at 6 pixels; one compiled program shared by the tests below (compiling is most
# of their time).
CROPS = A.MultiCrop(num_global=2, global_size=None, global_scale=AUG.crop_scale, num_local=3,
                    local_size=6)
IDS = jnp.array([7, 3, 12, 0, 1, 2, 100, 101])
KEY = jax.random.key(4)


def _images(n=8, side=12, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def views():
  return tuple(np.asarray(v) for v in multi_crop(AUG, CROPS, KEY, _images(), IDS))


def test_shapes_dtype_and_range(views):
  """2 global crops at the input size (None), then 3 local crops at 6 pixels."""
  assert [v.shape for v in views] == [(8, 12, 12, 3)] * 2 + [(8, 6, 6, 3)] * 3
  for v in views:
    assert v.dtype == np.float32 and 0.0 <= v.min() and v.max() <= 1.0
  assert CROPS.num_views == 5


def test_view_v_of_sample_i_uses_fold_in_key_v_then_sample_id(views):
  """The definition written out: view v of sample i = augment_image(aug with the type's crop
  scale, fold_in(fold_in(KEY, v), id_i), image_i, the type's size)."""
  images = _images()
  for v, (scale, size) in enumerate([(CROPS.global_scale, 12)] * 2 + [(CROPS.local_scale, 6)] * 3):
    aug = dataclasses.replace(AUG, crop_scale=scale)
    for i in (0, 2):
      expected = augment_image(aug, jax.random.fold_in(jax.random.fold_in(KEY, v), int(IDS[i])),
                               images[i], (size, size))
      np.testing.assert_allclose(views[v][i], expected, atol=1e-6)
  assert not np.allclose(views[0], views[1]) and not np.allclose(views[2], views[3])


def test_global_crops_are_two_views_when_the_scale_and_size_match(views):
  expected = jax.jit(A.two_views)(AUG, KEY, _images(), IDS)
  np.testing.assert_allclose(views[0], expected[0], atol=1e-6)
  np.testing.assert_allclose(views[1], expected[1], atol=1e-6)


def test_views_independent_of_batch_position_and_split(views):
  """Permuting the batch permutes the views; half a batch (as one of 2 devices holds it, next
  to other samples) gives the same views of its samples."""
  images = _images()
  perm = np.random.default_rng(3).permutation(8)
  for a, b in zip(multi_crop(AUG, CROPS, KEY, images[perm], IDS[perm]), views):
    np.testing.assert_allclose(a, b[perm], atol=1e-6)
  half = multi_crop(AUG, CROPS, KEY, np.concatenate([images[4:], _images(4, seed=9)]),
                    jnp.concatenate([IDS[4:], jnp.arange(200, 204)]))
  for a, b in zip(half, views):
    np.testing.assert_allclose(a[:4], b[4:], atol=1e-6)
    assert not np.allclose(a[4:], b[:4])


def test_crop_areas_of_each_crop_type_from_the_views():
  """End to end: on a horizontal ramp image (value x / (W - 1)) with square crops and no other
  op, a crop of width w <= the view's side S spans values 0 .. (w - 1)/(W - 1) (half-pixel
  bilinear sampling clamps at the crop's edges), so each view reveals its crop's area
  fraction (w / W)^2: global views' in (0.14, 1), local views' in (0.05, 0.14) up to pixel
  rounding, with means near the uniform means."""
  side, n = 64, 128
  ramp = np.broadcast_to(np.arange(side, dtype=np.float32)[None, :, None] / (side - 1),
                         (n, side, side, 1))
  crops = A.MultiCrop(num_global=2, global_size=side, num_local=4, local_size=side // 2)
  aug = A.Augmentation(crop_ratio=(1.0, 1.0))
  views = multi_crop(aug, crops, jax.random.key(0), ramp, jnp.arange(n))
  for v, scale in enumerate([crops.global_scale] * 2 + [crops.local_scale] * 4):
    values = np.asarray(views[v], np.float64)[..., 0]
    width = 1 + (values.max(axis=(1, 2)) - values.min(axis=(1, 2))) * (side - 1)
    np.testing.assert_allclose(width, np.round(width), atol=1e-3)
    area = np.round(width) ** 2 / side**2
    rounding = 2 * np.sqrt(scale[1]) / side + 1 / side**2
    assert area.min() >= scale[0] - rounding and area.max() <= scale[1] + rounding, (v, area)
    assert abs(area.mean() - sum(scale) / 2) < 0.1 * (scale[1] - scale[0]), (v, area.mean())


def test_multicrop_errors():
  with pytest.raises(ValueError, match="num_global"):
    A.MultiCrop(num_global=0)
  with pytest.raises(ValueError, match="num_local"):
    A.MultiCrop(num_local=-1)
  with pytest.raises(ValueError, match="local_scale"):
    A.MultiCrop(local_scale=(0.2, 0.1))
  with pytest.raises(ValueError, match="global_size"):
    A.MultiCrop(global_size=0)
  with pytest.raises(TypeError, match="crops must be a MultiCrop"):
    A.multi_crop(AUG, (2, 6), KEY, _images(), IDS)
