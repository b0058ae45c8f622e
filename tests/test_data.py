"""Tests of contrax.data: every source on small inputs, batch iteration, prefetch.

Oracles: scikit-learn's own digits loader and `train_test_split`, the arrays written into the
temporary image folders / npz files / TFDS datasets, and the batch-order formula written out
here from the definition.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from contrax import data


# ----------------------------------------------------------------------------- digits


def _digits_oracle(seed: int, test_fraction: float):
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  digits = load_digits()
  images = np.floor(digits.images * 255 / 16 + 0.5).astype(np.uint8)[..., None]
  train, test = train_test_split(np.arange(len(digits.target)), test_size=test_fraction,
                                 stratify=digits.target, random_state=seed)
  return (images[train], digits.target[train]), (images[test], digits.target[test])


@pytest.mark.parametrize("seed,test_fraction", [(0, 0.25), (3, 0.4)])
def test_digits_matches_sklearn_split(seed, test_fraction):
  ds = data.load("digits", seed=seed, test_fraction=test_fraction)
  (x_train, y_train), (x_test, y_test) = _digits_oracle(seed, test_fraction)
  assert ds.num_classes == 10 and ds.class_names == tuple("0123456789")
  assert ds.train.image_shape == ds.test.image_shape == (8, 8, 1)
  for split, x, y in ((ds.train, x_train, y_train), (ds.test, x_test, y_test)):
    assert len(split) == len(y)
    images, labels = split[np.arange(len(split))]
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(split.labels, y)


def test_digits_split_is_stratified_and_reproducible():
  ds = data.load("digits", seed=1)
  all_counts = np.bincount(np.concatenate([ds.train.labels, ds.test.labels]))
  test_counts = np.bincount(ds.test.labels, minlength=10)
  assert np.all(np.abs(test_counts - 0.25 * all_counts) <= 1)
  again = data.load("digits", seed=1)
  np.testing.assert_array_equal(ds.train.images, again.train.images)
  other = data.load("digits", seed=2)
  assert not np.array_equal(ds.train.labels, other.train.labels)


def test_digits_rejects_bad_test_fraction():
  with pytest.raises(ValueError, match="test_fraction"):
    data.load("digits", test_fraction=1.5)


# ----------------------------------------------------------------------------- load()


def test_load_rejects_unknown_source_and_options():
  with pytest.raises(ValueError, match="valid choices.*digits.*folder"):
    data.load("mnist")
  with pytest.raises(ValueError, match="num_train.*valid options"):
    data.load("digits", num_train=5)
  with pytest.raises(ValueError, match="needs an argument"):
    data.load("folder")
  with pytest.raises(ValueError, match="takes no argument"):
    data.load("digits:foo")
  with pytest.raises(ValueError, match="seed"):
    data.load("digits", seed=-1)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_shaped():
  options = dict(num_classes=4, image_shape=(5, 6, 3), num_train=40, num_test=12, spread=0.2)
  a = data.load("synthetic", seed=7, **options)
  b = data.load("synthetic", seed=7, **options)
  c = data.load("synthetic", seed=8, **options)
  assert a.train.images.shape == (40, 5, 6, 3) and a.test.images.shape == (12, 5, 6, 3)
  assert a.train.images.dtype == np.uint8 and a.num_classes == 4
  assert a.train.labels.min() >= 0 and a.train.labels.max() < 4
  np.testing.assert_array_equal(a.train.images, b.train.images)
  np.testing.assert_array_equal(a.test.labels, b.test.labels)
  assert not np.array_equal(a.train.images, c.train.images)


def test_synthetic_classes_are_prototypes_plus_noise():
  # spread 0: every image of a class is its prototype; prototypes differ between classes.
  ds = data.load("synthetic", num_classes=3, num_train=60, num_test=30, spread=0.0)
  x, y = ds.train.images.astype(np.int64), ds.train.labels
  for c in range(3):
    assert np.all(x[y == c] == x[y == c][0])
  assert len({x[y == c][0].tobytes() for c in range(3)}) == 3
  # small spread: the nearest train class mean recovers every test label.
  ds = data.load("synthetic", num_classes=5, num_train=200, num_test=100, spread=0.05)
  means = np.stack([ds.train.images[ds.train.labels == c].reshape(-1, 64).mean(0)
                    for c in range(5)])
  test = ds.test.images.reshape(-1, 64).astype(np.float64)
  nearest = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(nearest, ds.test.labels)


def test_synthetic_rejects_bad_options():
  with pytest.raises(ValueError, match="spread"):
    data.load("synthetic", spread=-1.0)
  with pytest.raises(ValueError, match="image_shape"):
    data.load("synthetic", image_shape=(8, 8))


# ----------------------------------------------------------------------------- folder


def _write(path, array, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt)


def _read_back(path):
  """What Pillow decodes from a written file: the oracle for lossy JPEG."""
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def _make_folder(root, rng, *, size=(6, 5)):
  """3 classes (written out of name order), PNG + JPG + JPEG; returns {image bytes: label}."""
  expected = []
  for name, ext, fmt in (("cat", ".png", "PNG"), ("ant", ".JPG", "JPEG"),
                         ("bee", ".jpeg", "JPEG")):
    for i in range(4):
      path = os.path.join(root, name, f"{i}{ext}")
      _write(path, rng.integers(0, 256, (*size, 3), dtype=np.uint8), fmt)
      expected.append((_read_back(path), ["ant", "bee", "cat"].index(name)))
  return expected


def _all_rows(ds):
  rows = []
  for split in (ds.train, ds.test):
    images, labels = split[np.arange(len(split))]
    rows += list(zip(images, labels))
  return rows


def _same_multiset(rows, expected):
  key = lambda pair: (pair[0].tobytes(), int(pair[1]))
  assert sorted(map(key, rows)) == sorted(map(key, expected))


def test_folder_reads_every_image_with_its_class(tmp_path):
  expected = _make_folder(tmp_path, np.random.default_rng(0))
  ds = data.load(f"folder:{tmp_path}", test_fraction=0.25)
  assert ds.class_names == ("ant", "bee", "cat") and ds.num_classes == 3
  assert ds.train.image_shape == (6, 5, 3)
  assert len(ds.train) == 9 and len(ds.test) == 3
  np.testing.assert_array_equal(np.bincount(ds.test.labels), [1, 1, 1])
  _same_multiset(_all_rows(ds), expected)
  again = data.load(f"folder:{tmp_path}", test_fraction=0.25)
  np.testing.assert_array_equal(ds.test.images, again.test.images)


def test_folder_grayscale_kept_when_all_gray_else_rgb(tmp_path):
  rng = np.random.default_rng(1)
  gray = {}
  for name in ("a", "b"):
    for i in range(3):
      gray[(name, i)] = rng.integers(0, 256, (4, 4), dtype=np.uint8)
      _write(str(tmp_path / "gray" / name / f"{i}.png"), gray[(name, i)])
  ds = data.load(f"folder:{tmp_path / 'gray'}", test_fraction=0.34)
  assert ds.train.image_shape == (4, 4, 1)
  _same_multiset(_all_rows(ds), [(x[..., None], "ab".index(n)) for (n, _), x in gray.items()])

  color = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  _write(str(tmp_path / "gray" / "a" / "color.png"), color)
  ds = data.load(f"folder:{tmp_path / 'gray'}", test_fraction=0.34)
  assert ds.train.image_shape == (4, 4, 3)
  expected = [(np.repeat(x[..., None], 3, -1), "ab".index(n)) for (n, _), x in gray.items()]
  _same_multiset(_all_rows(ds), expected + [(color, 0)])


def test_folder_skips_and_reports_bad_files(tmp_path):
  expected = _make_folder(tmp_path, np.random.default_rng(2))
  (tmp_path / "cat" / "broken.png").write_bytes(b"not a png at all")
  jpeg = io.BytesIO()
  Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(jpeg, format="JPEG")
  (tmp_path / "ant" / "truncated.jpg").write_bytes(jpeg.getvalue()[:40])
  (tmp_path / "bee" / "notes.txt").write_text("hello")
  with pytest.warns(UserWarning, match=r"3 of 15 files.*broken\.png"):
    ds = data.load(f"folder:{tmp_path}", test_fraction=0.25)
  _same_multiset(_all_rows(ds), expected)
  with pytest.raises(ValueError, match=r"3 of 15 files.*notes\.txt"):
    data.load(f"folder:{tmp_path}", on_bad_file="raise")
  with pytest.raises(ValueError, match="on_bad_file"):
    data.load(f"folder:{tmp_path}", on_bad_file="ignore")


def test_folder_structural_errors(tmp_path):
  rng = np.random.default_rng(3)
  image = lambda: rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load(f"folder:{tmp_path / 'missing'}")

  one = tmp_path / "one"
  for i in range(3):
    _write(str(one / "only" / f"{i}.png"), image())
  with pytest.raises(ValueError, match="at least 2 classes"):
    data.load(f"folder:{one}")

  flat = tmp_path / "flat"
  for i in range(3):
    _write(str(flat / f"{i}.png"), image())
  with pytest.raises(ValueError, match="at least 2 classes, found 0"):
    data.load(f"folder:{flat}")

  empty = tmp_path / "empty"
  for i in range(3):
    _write(str(empty / "a" / f"{i}.png"), image())
  os.makedirs(empty / "b")
  with pytest.raises(ValueError, match=r"class folder .*b'? is empty"):
    data.load(f"folder:{empty}")

  unreadable = tmp_path / "unreadable"
  for i in range(3):
    _write(str(unreadable / "a" / f"{i}.png"), image())
  os.makedirs(unreadable / "b")
  (unreadable / "b" / "x.png").write_bytes(b"garbage")
  with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"\['b'\] hold no readable"):
    data.load(f"folder:{unreadable}")

  mixed = tmp_path / "mixed"
  for name in ("a", "b"):
    for i in range(3):
      _write(str(mixed / name / f"{i}.png"), image())
  _write(str(mixed / "b" / "big.png"), rng.integers(0, 256, (7, 4, 3), dtype=np.uint8))
  with pytest.raises(ValueError, match=r"0\.png is \(4, 4\) but .*big\.png is \(7, 4\)"):
    data.load(f"folder:{mixed}")


# ----------------------------------------------------------------------------- npz


def _npz_arrays(rng, n_train=10, n_test=4, shape=(5, 5, 3), num_classes=3):
  return dict(x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
              y_train=rng.integers(0, num_classes, n_train),
              x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
              y_test=rng.integers(0, num_classes, n_test))


def test_npz_round_trip(tmp_path):
  arrays = _npz_arrays(np.random.default_rng(4))
  arrays["y_train"][0] = 2
  np.savez(tmp_path / "d.npz", **arrays)
  ds = data.load(f"npz:{tmp_path / 'd.npz'}")
  assert ds.num_classes == 3 and ds.class_names == ("0", "1", "2")
  for split, part in ((ds.train, "train"), (ds.test, "test")):
    images, labels = split[np.arange(len(split))]
    np.testing.assert_array_equal(images, arrays[f"x_{part}"])
    np.testing.assert_array_equal(labels, arrays[f"y_{part}"])
    assert labels.dtype == np.int32

  gray = {k: (v[..., 0] if k.startswith("x") else v) for k, v in arrays.items()}
  gray["class_names"] = np.array(["r", "g", "b", "k"])
  np.savez(tmp_path / "g.npz", **gray)
  ds = data.load(f"npz:{tmp_path / 'g.npz'}")
  assert ds.train.image_shape == (5, 5, 1) and ds.class_names == ("r", "g", "b", "k")
  np.testing.assert_array_equal(ds.train.images[..., 0], gray["x_train"])

  floats = dict(arrays, x_train=arrays["x_train"] / 255.0, x_test=arrays["x_test"] / 255.0)
  np.savez(tmp_path / "f.npz", **floats)
  ds = data.load(f"npz:{tmp_path / 'f.npz'}", num_classes=5)
  assert ds.num_classes == 5
  np.testing.assert_array_equal(ds.train.images, arrays["x_train"])


@pytest.mark.parametrize("change,match", [
    (lambda a: a.pop("y_test"), r"lacks arrays \['y_test'\]"),
    (lambda a: a.update(y_train=a["y_train"][:-1]), "same length"),
    (lambda a: a.update(x_test=a["x_test"][:, :4]), "share the image shape"),
    (lambda a: a.update(x_train=a["x_train"][:, None]), r"shape \[n, H, W\]"),
    (lambda a: a.update(y_test=-a["y_test"] - 1), "y_test must be >= 0"),
    (lambda a: a.update(class_names=np.array(["a", "b"])), r"labels must lie in \[0, 2\)"),
    (lambda a: a.update(x_train=a["x_train"] / 100.0), r"x_train is float.*\[0, 1\]"),
])
def test_npz_errors(tmp_path, change, match):
  arrays = _npz_arrays(np.random.default_rng(5))
  arrays["y_test"][0] = 2
  change(arrays)
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ValueError, match=match):
    data.load(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_type_errors(tmp_path):
  arrays = _npz_arrays(np.random.default_rng(6))
  np.savez(tmp_path / "i.npz", **dict(arrays, x_train=arrays["x_train"].astype(np.int64)))
  with pytest.raises(TypeError, match="x_train must be uint8 or float"):
    data.load(f"npz:{tmp_path / 'i.npz'}")
  np.savez(tmp_path / "l.npz", **dict(arrays, y_train=arrays["y_train"] + 0.5))
  with pytest.raises(TypeError, match="y_train must hold integers"):
    data.load(f"npz:{tmp_path / 'l.npz'}")
  with pytest.raises(FileNotFoundError):
    data.load(f"npz:{tmp_path / 'nothing.npz'}")


# ----------------------------------------------------------------------------- tfds


@pytest.fixture
def mock_tfds(monkeypatch):
  """`tfds.testing.mock_data`, with its datasets reported as prepared.

  mock_data fakes the records of any registered dataset but not the prepared files, which
  contrax looks for before reading so that a missing dataset is never downloaded.
  """
  import tensorflow_datasets as tfds  # a core dependency: missing is a failure, not a skip
  monkeypatch.setattr(data, "_tfds_is_prepared", lambda builder: True)
  with tfds.testing.mock_data(num_examples=12):
    yield tfds


@pytest.mark.parametrize("name, image_shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_tfds_through_mock_data(mock_tfds, name, image_shape):
  ds = data.load(f"tfds:{name}")
  source = mock_tfds.data_source(name, split="test")
  # Without metadata files the mock knows the 10 classes but not their names.
  assert ds.name == f"tfds:{name}" and ds.num_classes == 10
  assert ds.class_names == tuple(source.dataset_info.features["label"].names)
  assert ds.train.image_shape == image_shape and len(ds.train) == len(ds.test) == 12
  indices = np.array([5, 0, 11, 5])
  images, labels = ds.test[indices]
  assert images.dtype == np.uint8 and labels.dtype == np.int32
  np.testing.assert_array_equal(images, np.stack([source[int(i)]["image"] for i in indices]))
  np.testing.assert_array_equal(labels, [source[int(i)]["label"] for i in indices])
  np.testing.assert_array_equal(ds.test.labels, [source[i]["label"] for i in range(12)])
  images, labels = next(data.batches(ds.train, batch_size=4, seed=0))
  assert images.shape == (4, *image_shape) and labels.shape == (4,)


def test_tfds_not_prepared_fails_fast_without_network(tmp_path, monkeypatch):
  # Regression: `--data tfds:mnist` on a machine without the data retried the network for
  # 3.5 minutes, then ended in a traceback. Nothing may be downloaded: every download entry
  # point of TFDS raises here.
  import tensorflow_datasets as tfds  # a core dependency: missing is a failure, not a skip

  def no_network(*args, **kwargs):
    raise AssertionError("contrax tried to download")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", no_network)
  monkeypatch.setattr(tfds.core.utils.gcs_utils, "exists", no_network)
  with pytest.raises(ValueError) as error:
    data.load("tfds:mnist", data_dir=str(tmp_path))
  message = str(error.value)
  assert "'mnist' is not prepared" in message
  assert str(tmp_path) in message and str(tmp_path / "mnist") in message
  assert "tfds build mnist --data_dir DIR --file_format array_record" in message
  assert "TFDS_DATA_DIR" in message and "data_dir" in message
  assert "\n" not in message
  assert not any(tmp_path.iterdir())  # nothing was written either


def test_tfds_unknown_dataset_is_one_line():
  import tensorflow_datasets  # noqa: F401  (a core dependency: missing is a failure)
  with pytest.raises(ValueError, match="contrax_no_such_dataset not found") as error:
    data.load("tfds:contrax_no_such_dataset")
  assert "\n" not in str(error.value)


def test_tfds_download_option_is_gone():
  with pytest.raises(ValueError, match="unknown option.*download"):
    data.load("tfds:mnist", download=True)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  """A real ArrayRecord TFDS dataset (PNG-encoded images), prepared without TensorFlow."""
  import tensorflow_datasets as tfds  # a core dependency: missing is a failure, not a skip
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  rng = np.random.default_rng(7)
  arrays = {part: (rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8), np.arange(n) % 3)
            for part, n in (("train", 12), ("test", 5), ("unlabelled", 7))}
  arrays["unlabelled"][1][:] = -1  # as TFDS's stl10 labels its unlabelled split

  class ContraxTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(6, 5, 3)),
          "label": tfds.features.ClassLabel(names=["x", "y", "z"])}))

    def _split_generators(self, dl_manager):
      return {part: self._generate_examples(part) for part in arrays}

    def _generate_examples(self, part):
      for i, (image, label) in enumerate(zip(*arrays[part])):
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        yield i, {"image": io.BytesIO(png.getvalue()), "label": int(label)}

  ContraxTinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir, arrays


def test_tfds_reads_array_record_without_tensorflow(tiny_tfds):
  data_dir, arrays = tiny_tfds
  ds = data.load("tfds:contrax_tiny_images", data_dir=data_dir)
  assert ds.class_names == ("x", "y", "z") and ds.train.image_shape == (6, 5, 3)
  # The stored order is TFDS's (shuffled by key): compare as multisets, then row by row.
  for split, part in ((ds.train, "train"), (ds.test, "test")):
    images, labels = split[np.arange(len(split))]
    _same_multiset(list(zip(images, labels)), list(zip(*arrays[part])))
    np.testing.assert_array_equal(split.labels, labels)
    rows = np.array([3, 1, 3])
    np.testing.assert_array_equal(split[rows][0], images[rows])


def test_tfds_pretrain_split_is_read_beside_the_labelled_splits(tiny_tfds):
  """STL-10's protocol: pre-train on train+unlabelled (labels -1), evaluate on train/test."""
  data_dir, arrays = tiny_tfds
  ds = data.load("tfds:contrax_tiny_images", data_dir=data_dir,
                 pretrain_split="train+unlabelled")
  assert (len(ds.pretrain), len(ds.train), len(ds.test)) == (19, 12, 5)
  images, labels = ds.pretrain[np.arange(19)]
  both = [(x, y) for part in ("train", "unlabelled") for x, y in zip(*arrays[part])]
  _same_multiset(list(zip(images, labels)), both)
  assert sorted(labels)[:7] == [-1] * 7
  plain = data.load("tfds:contrax_tiny_images", data_dir=data_dir)
  assert plain.pretrain is plain.train
  lazy = data.load("tfds:contrax_tiny_images", data_dir=data_dir, image_size=4,
                   pretrain_split="unlabelled")
  assert isinstance(lazy.pretrain, data.RecordImageSplit) and len(lazy.pretrain) == 7
  np.testing.assert_array_equal(lazy.pretrain.labels, [-1] * 7)


@pytest.mark.slow
def test_stl10_config_runs_tiny_on_train_and_unlabelled(tiny_tfds, tmp_path):
  """`--config stl10` (ResNet-18, LARS, pre-training on train+unlabelled) through the CLI on
  the tiny dataset at widths 4, batch 8, 2 steps: it pre-trains on the 19 images of both
  splits, its online probe skips the unlabelled rows, the final probes use the 12 labelled
  ones. About 35 s on 2 cores."""
  import subprocess
  import sys
  data_dir, _ = tiny_tfds
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = dict(data="tfds:contrax_tiny_images", batch_size=8, steps=2, warmup_steps=1,
               widths="4,4,4,4", num_devices=1, progress=False, log_every=1, eval_every=0,
               checkpoint_every=2, knn_k=3)
  done = subprocess.run(
      [sys.executable, os.path.join(root, "experiments", "pretrain.py"), "--config", "stl10",
       "--workdir", str(tmp_path), *(f"--config.{k}={v}" for k, v in flags.items())],
      env=dict(os.environ, TFDS_DATA_DIR=data_dir), capture_output=True, text=True,
      timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert (summary["num_pretrain_images"], summary["num_train_images"],
          summary["num_test_images"]) == (19, 12, 5)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  probe = [r["probe_loss"] for r in records if "probe_loss" in r]
  assert len(probe) == 2 and np.all(np.isfinite(probe))
  assert 0 <= summary["linear_accuracy"] <= 1


def test_tfds_unknown_split_is_an_error(tiny_tfds):
  data_dir, _ = tiny_tfds
  with pytest.raises(ValueError, match="validation"):
    data.load("tfds:contrax_tiny_images", data_dir=data_dir, test_split="validation")


def test_tfds_prepared_without_random_access_is_one_clear_error(tiny_tfds, tmp_path):
  # The same dataset recorded as tfrecord (what `tfds build` writes by default): TFDS's own
  # NotImplementedError would end in a traceback; contrax says how to rebuild it.
  data_dir = tmp_path / "tfds"
  shutil.copytree(tiny_tfds[0], data_dir)
  (info_path,) = data_dir.glob("contrax_tiny_images/*/dataset_info.json")
  info = json.loads(info_path.read_text())
  assert info["fileFormat"] == "array_record"
  info_path.write_text(json.dumps(dict(info, fileFormat="tfrecord")))
  with pytest.raises(ValueError, match="stored as tfrecord, which has no random access.*"
                     "tfds build contrax_tiny_images --data_dir DIR --file_format array_record"):
    data.load("tfds:contrax_tiny_images", data_dir=str(data_dir))


# ----------------------------------------------------------------------------- batches


def _index_split(n):
  """A split whose label is the row index, so batches reveal which rows they hold."""
  return data.ArraySplit(np.zeros((n, 1, 1, 1), np.uint8), np.arange(n))


def _expected_rows(n, batch_size, seed, step):
  steps_per_epoch = n // batch_size
  epoch, position = divmod(step, steps_per_epoch)
  permutation = np.random.default_rng([seed, epoch]).permutation(n)
  return permutation[position * batch_size:(position + 1) * batch_size]


def test_batches_follow_the_defined_order():
  split = _index_split(23)
  got = list(itertools.islice(data.batches(split, batch_size=5, seed=3), 10))
  for step, (images, labels) in enumerate(got):
    assert images.shape == (5, 1, 1, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, _expected_rows(23, 5, 3, step))


def test_batches_cover_each_epoch_once_and_differ_between_epochs():
  split = _index_split(20)
  labels = [y for _, y in itertools.islice(data.batches(split, batch_size=4, seed=0), 10)]
  first, second = np.concatenate(labels[:5]), np.concatenate(labels[5:])
  np.testing.assert_array_equal(np.sort(first), np.arange(20))
  np.testing.assert_array_equal(np.sort(second), np.arange(20))
  assert not np.array_equal(first, second)


def test_batches_are_deterministic_and_resumable():
  split = _index_split(17)
  fresh = [y for _, y in itertools.islice(data.batches(split, batch_size=4, seed=9), 12)]
  again = [y for _, y in itertools.islice(data.batches(split, batch_size=4, seed=9), 12)]
  for k in (0, 3, 4, 7):
    resumed = data.batches(split, batch_size=4, seed=9, start_step=k)
    for expected in fresh[k:]:
      np.testing.assert_array_equal(next(resumed)[1], expected)
  for a, b in zip(fresh, again):
    np.testing.assert_array_equal(a, b)
  other = [y for _, y in itertools.islice(data.batches(split, batch_size=4, seed=10), 12)]
  assert not all(np.array_equal(a, b) for a, b in zip(fresh, other))


@pytest.mark.parametrize("process_count", [2, 4])
def test_batches_processes_cover_the_global_batch(process_count):
  split = _index_split(30)
  whole = data.batches(split, batch_size=8, seed=1, start_step=2)
  parts = [data.batches(split, batch_size=8, seed=1, start_step=2, process_index=p,
                        process_count=process_count) for p in range(process_count)]
  for _ in range(6):
    local = [next(part)[1] for part in parts]
    assert all(len(rows) == 8 // process_count for rows in local)
    np.testing.assert_array_equal(np.concatenate(local), next(whole)[1])


def test_batches_reject_bad_arguments():
  split = _index_split(10)
  with pytest.raises(ValueError, match="batch_size=11.*10 rows"):
    data.batches(split, batch_size=11, seed=0)
  with pytest.raises(ValueError, match="divisible by process_count=3"):
    data.batches(split, batch_size=4, seed=0, process_count=3)
  with pytest.raises(ValueError, match="process_index"):
    data.batches(split, batch_size=4, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="start_step"):
    data.batches(split, batch_size=4, seed=0, start_step=-1)


def test_array_split_checks():
  with pytest.raises(TypeError, match="uint8"):
    data.ArraySplit(np.zeros((2, 1, 1, 1), np.float32), np.zeros(2, int))
  with pytest.raises(ValueError, match="same length"):
    data.ArraySplit(np.zeros((2, 1, 1, 1), np.uint8), np.zeros(3, int))
  with pytest.raises(IndexError):
    _index_split(4)[np.array([4])]
  assert isinstance(_index_split(4), data.Split)


# ----------------------------------------------------------------------------- prefetch


def test_prefetch_yields_in_order_and_propagates_errors():
  assert list(data.prefetch(iter(range(7)), size=2)) == list(range(7))

  def failing():
    yield 1
    yield 2
    raise RuntimeError("source broke")

  it = data.prefetch(failing())
  assert next(it) == 1 and next(it) == 2
  with pytest.raises(RuntimeError, match="source broke"):
    next(it)


def test_prefetch_thread_stops_when_closed():
  before = set(threading.enumerate())
  it = data.prefetch(itertools.count(), size=1)
  (producer,) = set(threading.enumerate()) - before
  assert next(it) == 0
  it.close()
  deadline = time.monotonic() + 10
  while producer.is_alive():
    assert time.monotonic() < deadline, "prefetch thread still running after close()"
    time.sleep(0.05)
