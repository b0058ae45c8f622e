"""Images of every size: `imagefolder:` and variable-size TFDS sources (lazy), host-side
random-resized crops (`contrax.crops`), the Grain loader (`contrax.loader`) and pretrain on them.

Oracles: the files written into a generated ImageNet-style folder (sizes 20x30 .. 500x375,
grayscale, CMYK, RGBA and palette images, a corrupt file, a text file, an empty class);
torchvision's random-resized-crop definition (the area and log-aspect distributions it
implies, the fallback box written out here); Pillow's bilinear resampling written in float64
NumPy (`oracles.pil_bilinear_resize`); the batch-order formula of `contrax.data.batches`.
"""
from __future__ import annotations

import math
import os
import warnings

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from scipy import stats

from _imagefolder import make_imagefolder
from oracles import pil_bilinear_resize
from contrax import augment, crops, data, loader, runs

SIZE = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagenet")
  return str(root), make_imagefolder(str(root))


@pytest.fixture(scope="module")
def dataset(folder):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return data.load(f"imagefolder:{folder[0]}", image_size=SIZE)


# ----------------------------------------------------------------------------- the source


def test_imagefolder_lists_files_and_labels_without_decoding(folder):
  root, info = folder
  with pytest.warns(UserWarning) as caught:
    ds = data.load(f"imagefolder:{root}", image_size=SIZE)
  messages = [str(w.message) for w in caught]
  assert any("broken.jpg" in m and "README.txt" in m and "2 of 26 files" in m
             and m.endswith("skipped") for m in messages), messages
  assert any("'dog'" in m and "kept as classes without images" in m for m in messages), messages
  assert ds.class_names == ("ant", "bee", "cat", "dog") and ds.num_classes == 4
  assert isinstance(ds.train, data.FileSplit) and isinstance(ds.test, data.FileSplit)
  for split, part in ((ds.train, "train"), (ds.test, "val")):
    assert list(split.paths) == [p for p, _ in info[part]]
    np.testing.assert_array_equal(split.labels, [y for _, y in info[part]])
  assert ds.train.image_shape == ds.test.image_shape == (SIZE, SIZE, 3)


def test_imagefolder_refuses_bad_files_when_asked(folder):
  with pytest.raises(ValueError, match=r"broken\.jpg.*on_bad_file='skip'"):
    data.load(f"imagefolder:{folder[0]}", image_size=SIZE, on_bad_file="raise")


def test_imagefolder_single_folder_is_split_stratified(tmp_path):
  info = make_imagefolder(str(tmp_path), per_class=(10, 0), corrupt=False, extras=False,
                          empty_class=None)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # nothing to report
    ds = data.load(f"imagefolder:{tmp_path}/train", image_size=SIZE, test_fraction=0.2,
                   seed=3)
  labels = np.array([y for _, y in info["train"]])
  train_rows, test_rows = data.stratified_split(labels, test_fraction=0.2, seed=3)
  paths = np.array([p for p, _ in info["train"]])
  assert list(ds.train.paths) == list(paths[train_rows])
  assert list(ds.test.paths) == list(paths[test_rows])
  np.testing.assert_array_equal(np.bincount(ds.test.labels), [2, 2, 2])


def test_imagefolder_structural_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load(f"imagefolder:{tmp_path}/nope")
  os.makedirs(tmp_path / "only")
  with pytest.raises(ValueError, match="at least 2 classes"):
    data.load(f"imagefolder:{tmp_path}")
  with pytest.raises(ValueError, match="image_size must be"):
    data.load(f"imagefolder:{tmp_path}", image_size=0)


def test_evaluation_view_is_resize_and_centre_crop(dataset):
  images, labels = dataset.test[np.arange(len(dataset.test))]
  assert images.shape == (len(dataset.test), SIZE, SIZE, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, dataset.test.labels)
  for row in range(len(dataset.test)):  # each against the oracle on the full decode
    with Image.open(dataset.test.paths[row]) as image:
      if image.format == "JPEG":
        continue  # decoded at reduced size: see the draft test
      rgb = np.asarray(image.convert("RGB"))
    want = _oracle_crop(rgb, crops.center_box(*rgb.shape[:2]))
    assert np.abs(images[row] - want).max() <= 1


def test_grayscale_and_cmyk_are_read_as_rgb(dataset):
  modes = {}
  for row in range(len(dataset.train)):
    with Image.open(dataset.train.paths[row]) as image:
      modes.setdefault(image.mode, row)
  assert {"L", "CMYK", "RGBA", "P", "RGB"} <= set(modes)
  images, _ = dataset.train[np.array(list(modes.values()))]
  gray = images[list(modes).index("L")]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


# ----------------------------------------------------------------------------- crops


def _oracle_crop(rgb, box):
  """torchvision's resized crop of a box `(top, left, h, w)`: crop, then resize the crop."""
  top, left, h, w = box
  return pil_bilinear_resize(rgb[top:top + h, left:left + w], (0, 0, w, h), SIZE)


def test_random_resized_box_distributions():
  """10,000 draws on a 1000x1000 image with a scale range small enough that no attempt is
  rejected: area fraction ~ U[0.08, 0.5] and log(w/h) ~ U[log 3/4, log 4/3], as torchvision
  defines them (up to the rounding of w and h to pixels), boxes inside the image."""
  rng = np.random.default_rng(0)
  scale, ratio = (0.08, 0.5), (3 / 4, 4 / 3)
  boxes = np.array([crops.random_resized_box(rng, 1000, 1000, scale, ratio)
                    for _ in range(10_000)])
  top, left, h, w = boxes.T
  assert np.all((top >= 0) & (left >= 0) & (top + h <= 1000) & (left + w <= 1000))
  area = h * w / 1e6
  log_aspect = np.log(w / h)
  assert area.min() > 0.08 - 0.002 and area.max() < 0.5 + 0.002
  assert np.abs(log_aspect).max() <= math.log(4 / 3) + 0.003
  assert stats.kstest(area, stats.uniform(0.08, 0.42).cdf).pvalue > 1e-3
  lo = math.log(3 / 4)
  assert stats.kstest(log_aspect, stats.uniform(lo, -2 * lo).cdf).pvalue > 1e-3
  # Positions uniform over the free range: top / (H - h) ~ U[0, 1].
  assert stats.kstest(top / (1000 - h), "uniform").pvalue > 1e-3


def test_random_resized_box_default_ranges_and_fallback():
  rng = np.random.default_rng(1)
  boxes = np.array([crops.random_resized_box(rng, 300, 400) for _ in range(10_000)])
  top, left, h, w = boxes.T
  area = h * w / (300 * 400)
  assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
  assert np.all(np.abs(np.log(w / h)) <= math.log(4 / 3) + 0.02)
  # A 10 x 1000 strip with area >= 90%: every attempt fails (h <= 10 forces w/h >= 90), so
  # the box is the centre crop with the ratio clamped to 4/3: h = 10, w = round(10 * 4/3).
  for _ in range(20):
    assert crops.random_resized_box(rng, 10, 1000, (0.9, 1.0)) == (0, (1000 - 13) // 2, 10, 13)
  assert crops.random_resized_box(rng, 1000, 10, (0.9, 1.0)) == ((1000 - 13) // 2, 0, 13, 10)
  # Within the ratio range the fallback is the whole image.
  assert crops.center_box(10, 20, fraction=1.0) == (0, 5, 10, 10)


def test_crop_matches_the_pillow_oracle_on_fixed_boxes():
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
  image = Image.fromarray(rgb)
  for box in [(0, 0, 61, 83), (5, 7, 30, 41), (40, 60, 21, 23), (3, 2, 8, 9)]:
    got = crops.resize_box(image, box, SIZE).astype(np.float64)
    assert got.shape == (SIZE, SIZE, 3)
    assert np.abs(got - _oracle_crop(rgb, box)).max() <= 1, box


def test_jpeg_is_decoded_at_reduced_size_close_to_the_full_decode(tmp_path):
  from _imagefolder import photo
  path = str(tmp_path / "big.jpg")
  photo(np.random.default_rng(3), 480, 640, "RGB").save(path, quality=95)
  box = (40, 80, 400, 480)  # 400 x 480 pixels to 16: decodable at 1/8
  with Image.open(path) as image:
    decoded, fx, fy = crops._decode_for_boxes(image, [box], SIZE)
    assert decoded.size == (80, 60) and (fx, fy) == (0.125, 0.125)
    reduced = crops._resize_scaled_box(decoded, box, fx, fy, SIZE).astype(np.float64)
  with Image.open(path) as image:
    full = crops.resize_box(image, box, SIZE).astype(np.float64)
  assert np.abs(reduced - full).mean() < 3


def test_random_resized_crops_shape_and_determinism(dataset):
  for row in range(len(dataset.train)):
    with dataset.train.open(row) as image:
      a = crops.random_resized_crops(image, np.random.default_rng(row), size=SIZE, num_crops=3)
    with dataset.train.open(row) as image:
      b = crops.random_resized_crops(image, np.random.default_rng(row), size=SIZE, num_crops=3)
    assert a.shape == (3, SIZE, SIZE, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- the loader


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_crop_batches_shapes_order_and_an_epoch_once_across_two_processes(dataset):
  split, batch = dataset.train, 6  # 24 images: 4 steps an epoch
  per_process = []
  for p in range(2):
    it = loader.crop_batches(split, batch_size=batch, seed=5, num_steps=8, image_size=SIZE,
                             process_index=p, process_count=2, with_rows=True)
    got = _take(it, 8)
    it.close()
    for images, labels, rows in got:
      assert images.shape == (3, 2, SIZE, SIZE, 3) and images.dtype == np.uint8
      assert labels.dtype == np.int32
      np.testing.assert_array_equal(labels, split.labels[rows])
    per_process.append(np.stack([rows for _, _, rows in got]))
  rows = np.concatenate(per_process, axis=1)  # [step, global batch]
  for epoch in range(2):  # each epoch: every image exactly once, in the documented order
    seen = rows[4 * epoch:4 * epoch + 4].ravel()
    np.testing.assert_array_equal(seen, loader.epoch_rows(len(split), 5, epoch))
    assert sorted(seen) == list(range(len(split)))
  assert not set(per_process[0][:4].ravel()) & set(per_process[1][:4].ravel())


def test_crops_do_not_depend_on_the_number_of_processes(dataset):
  one = _take(loader.crop_batches(dataset.train, batch_size=4, seed=0, num_steps=2,
                                  image_size=SIZE), 2)
  two = [_take(loader.crop_batches(dataset.train, batch_size=4, seed=0, num_steps=2,
                                   image_size=SIZE, process_index=p, process_count=2), 2)
         for p in range(2)]
  for step in range(2):
    np.testing.assert_array_equal(
        one[step][0], np.concatenate([two[0][step][0], two[1][step][0]]))


@flax.struct.dataclass
class _State:
  step: jax.Array
  w: jax.Array


def test_resume_from_the_checkpoint_equals_the_uninterrupted_stream(dataset, tmp_path):
  make = lambda: loader.crop_batches(dataset.train, batch_size=4, seed=1,  # noqa: E731
                                     num_steps=12, image_size=SIZE)
  uninterrupted = _take(make(), 9)
  it = make()
  _take(it, 5)
  manager = runs.checkpoint_manager(str(tmp_path), data_iterator=it)
  runs.save(manager, _State(step=jnp.array(5), w=jnp.ones(3)))
  manager.wait_until_finished()
  _take(it, 2)  # the run goes on past the checkpoint, then dies
  del it, manager
  resumed_it = make()
  manager = runs.checkpoint_manager(str(tmp_path), data_iterator=resumed_it)
  state = runs.restore(manager, _State(step=jnp.array(0), w=jnp.zeros(3)))
  assert int(state.step) == 5 and float(state.w[0]) == 1.0
  for want, got in zip(uninterrupted[5:], _take(resumed_it, 4)):
    np.testing.assert_array_equal(want[0], got[0])
    np.testing.assert_array_equal(want[1], got[1])
  # A manager without the iterator reads the state item alone (load_variables does).
  plain = runs.checkpoint_manager(str(tmp_path)).restore(5, args=ocp.args.StandardRestore())
  assert float(plain["w"][0]) == 1.0


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume(dataset, tmp_path):
  """Two Grain worker processes (spawned: slow to start on a busy machine)."""
  make = lambda w: loader.crop_batches(dataset.train, batch_size=4, seed=2,  # noqa: E731
                                       num_steps=8, image_size=SIZE, num_workers=w)
  want = _take(make(0), 6)
  it = make(2)
  got = _take(it, 3)
  manager = runs.checkpoint_manager(str(tmp_path), data_iterator=it)
  runs.save(manager, _State(step=jnp.array(3), w=jnp.ones(1)))
  manager.wait_until_finished()
  it.close()
  resumed = make(2)
  runs.restore(runs.checkpoint_manager(str(tmp_path), data_iterator=resumed),
               _State(step=jnp.array(0), w=jnp.zeros(1)))
  got += _take(resumed, 3)
  resumed.close()
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a[0], b[0])


def test_crop_batches_argument_errors(dataset):
  kw = dict(batch_size=4, seed=0, num_steps=2, image_size=SIZE)
  with pytest.raises(ValueError, match="exceeds the split's 24 rows"):
    loader.crop_batches(dataset.train, **{**kw, "batch_size": 25})
  with pytest.raises(ValueError, match="divisible by process_count=3"):
    loader.crop_batches(dataset.train, **kw, process_count=3)
  with pytest.raises(ValueError, match=r"crop_scale\[0\]"):
    loader.crop_batches(dataset.train, **kw, scale=(0.0, 1.0))
  with pytest.raises(ValueError, match="crop_ratio must satisfy lo <= hi"):
    loader.crop_batches(dataset.train, **kw, ratio=(2.0, 1.0))


def test_a_file_corrupted_after_listing_is_named(tmp_path):
  info = make_imagefolder(str(tmp_path), per_class=(4, 1), corrupt=False, extras=False,
                          empty_class=None)
  ds = data.load(f"imagefolder:{tmp_path}", image_size=SIZE)
  victim = ds.train.paths[0]
  with open(victim, "r+b") as f:  # keep the header, break the body
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.truncate(size // 3)
  del info
  with pytest.raises(ValueError, match=os.path.basename(victim)):
    ds.train[np.array([0])]


# ----------------------------------------------------------------------------- views


def test_two_views_of_host_crops_skip_the_device_crop():
  rng = np.random.default_rng(4)
  host = rng.integers(0, 256, (3, 2, 8, 8, 3), dtype=np.uint8)
  ids = jnp.arange(10, 13)
  key = jax.random.key(0)
  aug = augment.Augmentation(crop_scale=(0.2, 1.0), flip_prob=0.5, gray_prob=0.5)
  no_crop = augment.Augmentation(flip_prob=0.5, gray_prob=0.5)

  @jax.jit  # one compilation (a busy CPU compiles slowly)
  def both(host):
    return augment.two_views(aug, key, host, ids), [
        augment.augment_batch(no_crop, jax.random.fold_in(key, v), host[:, v], ids)
        for v in range(2)]

  got, want = both(host)
  for v in range(2):
    np.testing.assert_allclose(got[v], want[v], atol=1e-6)
  with pytest.raises(ValueError, match="got 3 crops per image"):
    augment.two_views(aug, key, np.zeros((2, 3, 8, 8, 3), np.uint8), jnp.arange(2))


# ----------------------------------------------------------------------------- TFDS


@pytest.fixture
def mock_tfds(monkeypatch):
  """`tfds.testing.mock_data` with its datasets reported as prepared. The mock hands over
  decoded arrays only: it would encode a skipped-decoding image with TensorFlow, which contrax
  does not install, so here the image is not asked for encoded (the encoded path is tested on
  a real ArrayRecord dataset, `tfds_photos`)."""
  import tensorflow_datasets as tfds  # a core dependency: missing is a failure, not a skip
  monkeypatch.setattr(data, "_tfds_is_prepared", lambda builder: True)
  monkeypatch.setattr(data, "_image_decoders", lambda: None)
  with tfds.testing.mock_data(num_examples=12):
    yield tfds


def test_tfds_variable_size_images_through_mock_data(mock_tfds):
  with pytest.raises(ValueError, match="pass image_size"):
    data.load("tfds:imagenette", test_split="validation")
  ds = data.load("tfds:imagenette", test_split="validation", image_size=SIZE)
  assert isinstance(ds.train, data.RecordImageSplit) and ds.num_classes == 10
  source = mock_tfds.data_source("imagenette", split="train")
  shapes = {source[i]["image"].shape for i in range(len(source))}
  assert len(shapes) > 1  # the mock images do vary in size
  np.testing.assert_array_equal(ds.train.labels, [source[i]["label"] for i in range(12)])
  images, labels = ds.test[np.arange(4)]
  assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.uint8
  rgb = source[3]["image"]
  got, _ = ds.train[np.array([3])]
  assert np.abs(got[0] - _oracle_crop(rgb, crops.center_box(*rgb.shape[:2]))).max() <= 1
  batches = loader.crop_batches(ds.train, batch_size=4, seed=0, num_steps=3, image_size=SIZE,
                                with_rows=True)
  rows = np.concatenate([next(batches)[2] for _ in range(3)])
  assert sorted(rows) == list(range(12))


@pytest.fixture(scope="module")
def tfds_photos(tmp_path_factory):
  """A real ArrayRecord TFDS dataset of variable-size JPEGs (80x120 .. 375x500), prepared
  without TensorFlow; returns its data_dir and the stored JPEG bytes with their labels."""
  import io
  import tensorflow_datasets as tfds  # a core dependency: missing is a failure, not a skip
  from _imagefolder import photo
  data_dir = str(tmp_path_factory.mktemp("tfds_photos"))
  rng = np.random.default_rng(11)
  records = []
  for i, (h, w) in enumerate([(80, 120), (375, 500), (240, 180), (300, 300), (120, 96),
                              (500, 375)]):
    jpeg = io.BytesIO()
    photo(rng, h, w, "RGB").save(jpeg, format="JPEG", quality=95)
    records.append((jpeg.getvalue(), i % 2))

  class ContraxTinyPhotos(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(names=["a", "b"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, (jpeg, label) in enumerate(records):
        yield i, {"image": io.BytesIO(jpeg), "label": label}

  ContraxTinyPhotos(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir, records


def test_tfds_jpegs_are_decoded_by_pillow_at_reduced_size(tfds_photos):
  """Variable-size TFDS images reach contrax still encoded: labels are read without decoding
  an image, and a JPEG is decoded at the draft scale the crop allows, close to the full
  decode's crop (the reduced-size decode test above bounds the same error)."""
  import io
  data_dir, records = tfds_photos
  ds = data.load("tfds:contrax_tiny_photos", data_dir=data_dir, test_split="train",
                 image_size=SIZE)
  stored = {jpeg: label for jpeg, label in records}
  for i in range(len(ds.train)):
    record = ds.train.source[i]
    assert isinstance(record["image"], bytes) and stored[record["image"]] == ds.train.label(i)
  np.testing.assert_array_equal(sorted(ds.train.labels), sorted(stored.values()))
  images, _ = ds.test[np.arange(len(ds.test))]
  for i in range(len(ds.test)):
    with ds.test.open(i) as image:
      assert image.format == "JPEG"
    with Image.open(io.BytesIO(ds.test.source[i]["image"])) as image:
      rgb = np.asarray(image.convert("RGB"))
    want = _oracle_crop(rgb, crops.center_box(*rgb.shape[:2])).astype(np.float64)
    assert np.abs(images[i] - want).mean() < 3


# ----------------------------------------------------------------------------- pretrain


def _pretrain_config(root, **overrides):
  from contrax import train
  c = train.default_config()
  c.data = f"imagefolder:{root}"
  c.image_size = SIZE
  c.augmentation = "crop+flip"  # the crop is cut on the host; light to compile
  c.batch_size = 8
  c.steps = 4
  c.log_every = 2
  c.eval_every = 0
  c.checkpoint_every = 2
  c.num_devices = 1
  c.progress = False
  c.knn_k = 3
  c.projection_dim = 8
  c.update(overrides)
  return c


def _final_state(workdir):
  manager = runs.checkpoint_manager(workdir)
  return manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())


@pytest.mark.slow
def test_pretrain_end_to_end_on_variable_size_photos(folder, tmp_path):
  """About 80 s on the shared 2-core machine (compilation of the step and the evaluation)."""
  from contrax import train
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the folder's bad files are reported: tested above
    summary = train.pretrain(_pretrain_config(folder[0]), str(tmp_path))
  assert summary["image_shape"] == [SIZE, SIZE, 3] and summary["steps"] == 4
  assert summary["num_train_images"] == 24 and summary["num_test_images"] == 6
  losses = [r["loss"] for r in runs.read_metrics(str(tmp_path)) if "loss" in r]
  assert len(losses) == 2 and all(np.isfinite(losses))
  assert {"data", "default"} <= set(os.listdir(tmp_path / "checkpoints" / "4"))
  model, variables = train.load_trained(str(tmp_path))  # the state item reads back alone
  assert "params" in variables


def test_pretrain_refuses_crops_the_method_cannot_take(folder, tmp_path):
  from contrax import train
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(train.ConfigError, match="num_crops=3 but method.name='simclr' takes 2"):
      train.pretrain(_pretrain_config(folder[0], num_crops=3), str(tmp_path))
    with pytest.raises(train.ConfigError, match=r"crop_scale\[0\]"):
      train.pretrain(_pretrain_config(folder[0], crop_scale=(0.0, 1.0)), str(tmp_path / "b"))


@pytest.mark.slow
def test_pretrain_resumed_after_a_crash_equals_the_uninterrupted_run(folder, tmp_path):
  """A run stopped right after its step-2 checkpoint and resumed ends with the parameters of
  the uninterrupted run: the Grain iterator state saved with the checkpoint gives the same
  batches (Grain had already read ahead when it stopped)."""
  from contrax import train
  config = _pretrain_config(folder[0], steps=6)
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  original = runs.save

  def save_then_crash(manager, state):
    original(manager, state)
    if int(state.step) == 2:
      manager.wait_until_finished()
      raise KeyboardInterrupt

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    train.pretrain(config, full)
    runs.save = save_then_crash
    try:
      with pytest.raises(KeyboardInterrupt):
        train.pretrain(config, cut)
    finally:
      runs.save = original
    train.pretrain(config, cut, resume=True)
  a, b = _final_state(full), _final_state(cut)
  assert int(a["step"]) == int(b["step"]) == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_imagenet_config_runs_tiny_on_cpu(folder, tmp_path):
  """The `--config imagenet` recipe (LARS, host crops, ResNet-50 at widths 4) at 16 px, batch 8, 2 steps."""
  import importlib.util
  from contrax import train
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "experiments", "configs", "pretrain.py")
  spec = importlib.util.spec_from_file_location("pretrain_configs", path)
  configs = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(configs)
  c = configs.get_config("imagenet")
  c.update(dict(data=f"imagefolder:{folder[0]}", image_size=SIZE, batch_size=8, steps=2,
                warmup_steps=1, widths=(4, 4, 4, 4), data_workers=0, num_devices=1,
                progress=False, log_every=1, checkpoint_every=2, knn_k=3))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    summary = train.pretrain(c, str(tmp_path))
  assert summary["steps"] == 2 and summary["image_shape"] == [SIZE, SIZE, 3]
