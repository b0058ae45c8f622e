"""Host-side image data: sources of uint8 image batches with integer labels.

A source is chosen by one string (`load(spec)`):

| spec | what |
|---|---|
| `digits` | scikit-learn's 8×8 handwritten digits (ships with scikit-learn: the embedded default) |
| `synthetic` | seeded latent-class images: a random prototype per class plus Gaussian noise |
| `folder:PATH` | an image folder, `PATH/<class>/*.png|jpg|jpeg`, read into memory with Pillow |
| `npz:PATH` | a `.npz` with `x_train, y_train, x_test, y_test` |
| `tfds:NAME` | a prepared TFDS dataset (ArrayRecord random access, no TensorFlow, no download) |
| `imagefolder:PATH` | photos of any size, lazily: `PATH/{train,val}/<class>/*` or `PATH/<class>/*` |

`imagefolder:` and TFDS datasets whose images vary in size (given `image_size`) give
`LazyImageSplit`s: nothing is decoded at start-up (a folder's file list and labels come from
its directory tree); evaluation reads `split[indices]` as resize + centre crop to
`image_size`, and training reads random-resized crops per image on the host through the Grain
loader of `contrax.loader` (`contrax.crops` defines the crops).

Every source gives an `ImageDataset` of two `Split`s. A split is random access: `split[indices]`
returns `(images uint8 [n, H, W, C], labels int32 [n])`. `batches` turns a split into the
deterministic, resumable, per-process stream of batches a training loop consumes; `prefetch`
overlaps producing the next batches on the host with the device step.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import inspect
import os
import queue
import threading
import warnings
from typing import (Any, Callable, Generator, Iterable, Iterator, Protocol, Sequence,
                    runtime_checkable)

import numpy as np

from contrax import _checks

__all__ = [
    "IMAGE_EXTENSIONS", "Split", "ArraySplit", "LazyImageSplit", "FileSplit", "RecordImageSplit",
    "ImageDataset",
    "stratified_split", "SOURCES", "load", "batches", "prefetch",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_PILLOW_FORMATS = ("PNG", "JPEG")  # what the extensions promise; skips probing other formats
_GRAY_MODES = ("1", "L", "LA")
_BAD_FILES_SHOWN = 5


@runtime_checkable
class Split(Protocol):
  """One split of a dataset: random access to `(images, labels)` rows.

  `split[indices]` takes a 1-D integer array and returns `(uint8 [n, H, W, C], int32 [n])`.
  `labels` holds every label (int32 `[len(split)]`), `image_shape` is `(H, W, C)`.
  """

  # Read-only properties: a split may compute them (`LazyImageSplit.image_shape`) or read
  # them once, on first use (`RecordImageSplit.labels`).
  @property
  def labels(self) -> np.ndarray:
    ...

  @property
  def image_shape(self) -> tuple[int, int, int]:
    ...

  def __len__(self) -> int:
    ...

  def __getitem__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ...


def _check_indices(indices, length: int) -> np.ndarray:
  indices = np.asarray(indices)
  if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
    raise TypeError(f"indices must be a 1-D integer array, got dtype {indices.dtype} and "
                    f"shape {indices.shape}")
  if indices.size and (indices.min() < 0 or indices.max() >= length):
    raise IndexError(f"indices must lie in [0, {length}), got values in "
                     f"[{indices.min()}, {indices.max()}]")
  return indices.astype(np.int64)


def _check_labels(name: str, labels) -> np.ndarray:
  return _checks.labels(name, labels).astype(np.int32)


class ArraySplit:
  """A split held in memory: `images` uint8 `[n, H, W, C]` and `labels` int `[n]`."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise TypeError(f"images must have dtype uint8, got {images.dtype}")
    _checks.rank("images", images, 4)
    labels = _check_labels("labels", labels)
    if len(labels) != len(images):
      raise ValueError(f"images and labels must have the same length, got {len(images)} "
                       f"images and {len(labels)} labels")
    self.images = images
    self.labels = labels
    height, width, channels = images.shape[1:]
    self.image_shape = (int(height), int(width), int(channels))

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = _check_indices(indices, len(self))
    return self.images[indices], self.labels[indices]

  def __repr__(self) -> str:
    return f"ArraySplit(len={len(self)}, image_shape={self.image_shape})"


class LazyImageSplit:
  """A split of images of every size, decoded on demand (never the whole split at once).

  Subclasses give `len`, `labels` (int32, without decoding images) and `open(i)`, the i-th
  image as an opened, not yet decoded, PIL image (so that a JPEG can be decoded at reduced
  size), and `label(i)`. `split[indices]` is the evaluation view: uint8 `[n, S, S, 3]` (resize
  + centre crop to `image_size` S, `contrax.crops.center_crop`), decoded by `num_threads`
  threads; `image_shape` is `(S, S, 3)`. Training crops are cut by `contrax.loader`.
  """

  image_size: int
  num_threads: int | None = None
  labels: np.ndarray

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)

  def __len__(self) -> int:
    raise NotImplementedError

  def open(self, index: int):
    raise NotImplementedError

  def label(self, index: int) -> int:
    return int(self.labels[index])

  def center_crop(self, index: int) -> np.ndarray:
    """uint8 `[S, S, 3]`: the evaluation view of image `index`."""
    from contrax import crops
    with self.open(index) as image:
      return crops.center_crop(image, size=self.image_size)

  def __getitem__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = _check_indices(indices, len(self))
    images = np.zeros((len(indices), *self.image_shape), np.uint8)
    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
      for row, image in enumerate(pool.map(self.center_crop, (int(i) for i in indices))):
        images[row] = image
    return images, np.array([self.label(int(i)) for i in indices], dtype=np.int32)


class FileSplit(LazyImageSplit):
  """Image files `paths` with int `labels`, decoded on demand (PNG or JPEG, by content)."""

  def __init__(self, paths: Sequence[str], labels, *, image_size: int,
               num_threads: int | None = None):
    self.paths = np.asarray(paths, dtype=np.str_)
    self.labels = _check_labels("labels", labels)
    if len(self.paths) != len(self.labels):
      raise ValueError(f"paths and labels must have the same length, got {len(self.paths)} "
                       f"and {len(self.labels)}")
    self.image_size = _checks.positive_int("image_size", image_size)
    self.num_threads = num_threads

  def __len__(self) -> int:
    return len(self.paths)

  def open(self, index: int):
    from PIL import Image
    path = str(self.paths[index])
    try:
      return Image.open(path, formats=_PILLOW_FORMATS)
    except Exception as e:  # a file broken after the listing checked it: name it
      raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e

  def center_crop(self, index: int) -> np.ndarray:
    try:
      return super().center_crop(index)
    except OSError as e:  # a body that is truncated or corrupt past a good header
      raise ValueError(f"cannot decode image {self.paths[index]}: {e}") from e

  def __repr__(self) -> str:
    return f"FileSplit(len={len(self)}, image_size={self.image_size})"


class RecordImageSplit(LazyImageSplit):
  """A random-access sequence of `{"image": [h, w, c] of any size, "label": int}` records (a
  TFDS data source), decoded on demand; `labels` reads every record once, on first use."""

  def __init__(self, source: Sequence[dict], *, image_size: int, num_threads: int | None = None):
    self.source = source
    self.image_size = _checks.positive_int("image_size", image_size)
    self.num_threads = num_threads

  def __len__(self) -> int:
    return len(self.source)

  # A cached_property is writeable (it caches in the instance's __dict__), as the base's
  # attribute is, but mypy's override check counts it as a read-only property.
  @functools.cached_property
  def labels(self) -> np.ndarray:  # type: ignore[override]
    return np.array([self.source[i]["label"] for i in range(len(self))], dtype=np.int32)

  def label(self, index: int) -> int:
    if "labels" in self.__dict__:
      return int(self.labels[index])
    return int(self.source[index]["label"])

  def open(self, index: int):
    import io
    from PIL import Image
    image = self.source[index]["image"]
    if isinstance(image, bytes):  # records read with the image decoding skipped
      return Image.open(io.BytesIO(image), formats=_PILLOW_FORMATS)
    image = np.asarray(image)
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)

  def __repr__(self) -> str:
    return f"RecordImageSplit(source={self.source!r}, len={len(self)})"


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """A named dataset: a train and a test split sharing image shape and classes.

  `pretrain` is the split pre-training reads: `train` unless a source names another (STL-10's
  `train+unlabelled`); its rows labelled -1 have no label (the online probe leaves them out).
  Evaluation (kNN, linear probe) fits on `train` and scores on `test`.
  """

  name: str
  train: Split
  test: Split
  num_classes: int
  class_names: tuple[str, ...]
  pretrain: Split = None  # type: ignore[assignment]  # None: `train` (set in __post_init__)

  def __post_init__(self):
    _checks.positive_int("num_classes", self.num_classes)
    if len(self.class_names) != self.num_classes:
      raise ValueError(f"class_names must have num_classes={self.num_classes} entries, got "
                       f"{len(self.class_names)}")
    if self.pretrain is None:
      object.__setattr__(self, "pretrain", self.train)
    for part in ("test", "pretrain"):
      if getattr(self, part).image_shape != self.train.image_shape:
        raise ValueError(f"train and {part} image shapes differ: {self.train.image_shape} and "
                         f"{getattr(self, part).image_shape}")


def stratified_split(labels: np.ndarray, *, test_fraction: float, seed: int,
                     what: str = "labels") -> tuple[np.ndarray, np.ndarray]:
  """Row indices `(train, test)` of a stratified split: `test_fraction` of the rows to test,
  every class in proportion (scikit-learn's `train_test_split(stratify=labels)`, seeded).

  The one stratified split of contrax (dataset train/test splits, the linear probe's
  validation split). ValueError naming `what` when a class is too small to be split.
  """
  from sklearn.model_selection import train_test_split
  test_fraction = _checks.in_range("test_fraction", test_fraction, 0.0, 1.0, include_low=False)
  try:
    train_rows, test_rows = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed)
  except ValueError as e:
    raise ValueError(f"cannot split {what} ({len(labels)} rows, "
                     f"{len(np.unique(labels))} classes) into two stratified parts with "
                     f"test_fraction={test_fraction}: {e}") from e
  return train_rows, test_rows


def _split_in_memory(name: str, images: np.ndarray, labels: np.ndarray,
                     class_names: Sequence[str], *, test_fraction: float,
                     seed: int) -> ImageDataset:
  train_rows, test_rows = stratified_split(labels, test_fraction=test_fraction, seed=seed,
                                            what=name)
  return ImageDataset(name=name, train=ArraySplit(images[train_rows], labels[train_rows]),
                      test=ArraySplit(images[test_rows], labels[test_rows]),
                      num_classes=len(class_names), class_names=tuple(class_names))


def _to_uint8(name: str, images: np.ndarray) -> np.ndarray:
  """uint8 as is; floats in [0, 1] as `round(255 x)`; anything else is an error."""
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise TypeError(f"{name} must be uint8 or float in [0, 1], got dtype {images.dtype}")
  if images.size and not (np.all(np.isfinite(images)) and images.min() >= 0
                          and images.max() <= 1):
    raise ValueError(f"{name} is float, so it must lie in [0, 1], got values in "
                     f"[{np.nanmin(images)}, {np.nanmax(images)}]")
  return np.round(images * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- sources


def _load_digits(*, seed: int, test_fraction: float = 0.25) -> ImageDataset:
  """scikit-learn's digits: 1,797 8×8 images, values 0..16 mapped to `round(v·255/16)`."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  return _split_in_memory("digits", images, labels, [str(c) for c in range(10)],
                          test_fraction=test_fraction, seed=seed)


def _load_synthetic(*, seed: int, num_classes: int = 10,
                    image_shape: Sequence[int] = (8, 8, 1), num_train: int = 1000,
                    num_test: int = 200, spread: float = 0.1) -> ImageDataset:
  """Latent-class images: `x = clip(mu_y + spread * eps, 0, 1)`, stored as `round(255 x)`.

  Prototypes `mu_c ~ U[0, 1]^(H·W·C)`, labels `y ~ U{0..C-1}`, noise `eps ~ N(0, I)`, all from
  `np.random.default_rng(seed)` (prototypes, then train, then test).
  """
  num_classes = _checks.positive_int("num_classes", num_classes)
  num_train = _checks.positive_int("num_train", num_train)
  num_test = _checks.positive_int("num_test", num_test)
  spread = _checks.non_negative("spread", spread)
  if len(image_shape) != 3:
    raise ValueError(f"image_shape must be (height, width, channels), got {image_shape!r}")
  image_shape = tuple(_checks.positive_int("image_shape", d) for d in image_shape)
  rng = np.random.default_rng(seed)
  prototypes = rng.uniform(size=(num_classes, *image_shape))

  def sample(n: int) -> ArraySplit:
    labels = rng.integers(num_classes, size=n)
    noise = rng.standard_normal(size=(n, *image_shape))
    images = np.clip(prototypes[labels] + spread * noise, 0.0, 1.0)
    return ArraySplit(np.round(images * 255.0).astype(np.uint8), labels)

  train = sample(num_train)
  return ImageDataset(name="synthetic", train=train, test=sample(num_test),
                      num_classes=num_classes,
                      class_names=tuple(str(c) for c in range(num_classes)))


def _decode_image(path: str) -> np.ndarray:
  """`[H, W]` uint8 for grayscale files, `[H, W, 3]` for everything else (alpha dropped)."""
  from PIL import Image
  with Image.open(path, formats=_PILLOW_FORMATS) as image:
    mode = "L" if image.mode in _GRAY_MODES else "RGB"
    return np.asarray(image.convert(mode))


def _try_decode(path: str) -> np.ndarray | str:
  """The decoded image, or the reason it could not be read."""
  if not os.path.isfile(path):
    return "not a regular file"
  if not path.lower().endswith(IMAGE_EXTENSIONS):
    return f"not an image file (extension not in {', '.join(IMAGE_EXTENSIONS)})"
  try:
    return _decode_image(path)
  except Exception as e:  # Pillow raises many types for broken files (OSError, SyntaxError, ...)
    return f"unreadable image ({type(e).__name__}: {e})"


def _load_folder(path: str, *, seed: int, test_fraction: float = 0.1,
                 on_bad_file: str = "skip", num_threads: int | None = None) -> ImageDataset:
  """`path/<class>/<image>`: classes are the sub-folders sorted by name.

  Files that are not readable `.png/.jpg/.jpeg` images are reported with `warnings.warn` and
  skipped (`on_bad_file="skip"`) or raise (`"raise"`). Images are converted to RGB, or kept
  one-channel when every image is grayscale; all must share one size. Hidden entries
  (names starting with ".") are ignored.
  """
  _checks.choice("on_bad_file", on_bad_file, ("skip", "raise"))
  if num_threads is not None:
    num_threads = _checks.positive_int("num_threads", num_threads)
  if not os.path.exists(path):
    raise FileNotFoundError(f"image folder {path!r} does not exist")
  if not os.path.isdir(path):
    raise NotADirectoryError(f"image folder {path!r} is not a directory")
  class_names = sorted(e.name for e in os.scandir(path)
                       if e.is_dir() and not e.name.startswith("."))
  if len(class_names) < 2:
    raise ValueError(f"image folder {path!r} must hold one sub-folder per class and at least 2 "
                     f"classes, found {len(class_names)}: {class_names}")
  files, file_labels = [], []
  for label, name in enumerate(class_names):
    entries = sorted(e.name for e in os.scandir(os.path.join(path, name))
                     if not e.name.startswith("."))
    if not entries:
      raise ValueError(f"class folder {os.path.join(path, name)!r} is empty")
    files += [os.path.join(path, name, e) for e in entries]
    file_labels += [label] * len(entries)

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    decoded = list(pool.map(_try_decode, files))

  bad = [(f, d) for f, d in zip(files, decoded) if isinstance(d, str)]
  if bad:
    shown = "; ".join(f"{f} ({reason})" for f, reason in bad[:_BAD_FILES_SHOWN])
    more = f"; and {len(bad) - _BAD_FILES_SHOWN} more" if len(bad) > _BAD_FILES_SHOWN else ""
    message = (f"image folder {path!r}: {len(bad)} of {len(files)} files are not readable "
               f"images: {shown}{more}")
    if on_bad_file == "raise":
      raise ValueError(message + " (pass on_bad_file='skip' to skip them)")
    warnings.warn(message + "; skipped", stacklevel=3)
  good = [(f, d, y) for f, d, y in zip(files, decoded, file_labels) if not isinstance(d, str)]
  if not good:
    raise ValueError(f"image folder {path!r} holds no readable images")
  labels = np.array([y for _, _, y in good], dtype=np.int32)
  counts = np.bincount(labels, minlength=len(class_names))
  if np.any(counts == 0):
    empty = [class_names[c] for c in np.flatnonzero(counts == 0)]
    raise ValueError(f"image folder {path!r}: class folders {empty} hold no readable images")

  first_path, first, _ = good[0]
  for other_path, other, _ in good[1:]:
    if other.shape[:2] != first.shape[:2]:
      raise ValueError(
          f"all images in an image folder must share one size (height, width): {first_path} "
          f"is {first.shape[:2]} but {other_path} is {other.shape[:2]}")
  if all(d.ndim == 2 for _, d, _ in good):
    images = np.stack([d for _, d, _ in good])[..., None]
  else:
    images = np.stack([np.repeat(d[..., None], 3, axis=-1) if d.ndim == 2 else d
                       for _, d, _ in good])
  return _split_in_memory(f"folder:{path}", images, labels, class_names,
                          test_fraction=test_fraction, seed=seed)


def _probe_image(path: str) -> str | None:
  """None if `path` is a PNG/JPEG whose header Pillow reads (no decoding), else the reason."""
  if not os.path.isfile(path):
    return "not a regular file"
  if not path.lower().endswith(IMAGE_EXTENSIONS):
    return f"not an image file (extension not in {', '.join(IMAGE_EXTENSIONS)})"
  from PIL import Image
  try:
    with Image.open(path, formats=_PILLOW_FORMATS) as image:
      width, height = image.size
    if width < 1 or height < 1:
      return f"empty image ({width}x{height})"
  except Exception as e:  # Pillow raises many types for broken files (OSError, SyntaxError, ...)
    return f"unreadable image ({type(e).__name__}: {e})"
  return None


def _report(path: str, problems: list[str], total: int, what: str, on_bad_file: str,
            action: str = "skipped") -> None:
  if not problems:
    return
  shown = "; ".join(problems[:_BAD_FILES_SHOWN])
  extra = len(problems) - _BAD_FILES_SHOWN
  more = f"; and {extra} more" if extra > 0 else ""
  message = f"image folder {path!r}: {len(problems)} of {total} {what}: {shown}{more}"
  if on_bad_file == "raise":
    raise ValueError(message + " (pass on_bad_file='skip' to skip them)")
  warnings.warn(f"{message}; {action}", stacklevel=4)


def _list_class_files(path: str, class_names: Sequence[str], *, on_bad_file: str,
                      check_files: bool, num_threads: int | None,
                      report_empty: bool = True) -> tuple[list[str], np.ndarray]:
  """`(files, labels)` of `path/<class>/*` for the given classes; unreadable files are
  reported and skipped (or refused) after a header probe (`check_files`), and so is a class
  folder that is missing or holds no readable image (if `report_empty`)."""
  files, labels, empty = [], [], []
  for label, name in enumerate(class_names):
    folder = os.path.join(path, name)
    entries = (sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
               if os.path.isdir(folder) else [])
    if not entries:
      empty.append(name)
    files += [os.path.join(folder, e) for e in entries]
    labels += [label] * len(entries)
  if check_files:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      reasons = list(pool.map(_probe_image, files))
  else:
    reasons = [None if f.lower().endswith(IMAGE_EXTENSIONS) else "not an image file"
               for f in files]
  bad = [f"{f} ({r})" for f, r in zip(files, reasons) if r is not None]
  _report(path, bad, len(files), "files are not readable images", on_bad_file)
  keep = [i for i, r in enumerate(reasons) if r is None]
  files = [files[i] for i in keep]
  kept_labels = np.array([labels[i] for i in keep], dtype=np.int32)
  counts = np.bincount(kept_labels, minlength=len(class_names))
  empty = [name for c, name in enumerate(class_names) if counts[c] == 0] if report_empty else []
  _report(path, [f"{name!r}" for name in empty], len(class_names),
          "class folders hold no readable image", on_bad_file,
          action="kept as classes without images")
  if not files:
    raise ValueError(f"image folder {path!r} holds no readable images")
  return files, kept_labels


def _class_folders(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


_SPLIT_FOLDERS = {"train": ("train",), "test": ("val", "validation", "test")}


def _load_imagefolder(path: str, *, seed: int, image_size: int = 224,
                      test_fraction: float = 0.1, on_bad_file: str = "skip",
                      check_files: bool = True,
                      num_threads: int | None = None) -> ImageDataset:
  """Photos of every size under `path`, listed at start-up and decoded lazily (`FileSplit`).

  Layouts: ImageNet's `path/train/<class>/*` with `path/val/<class>/*` (or `validation/`,
  `test/`): the classes are train's sub-folders sorted by name; or one folder
  `path/<class>/*`, split stratified (`test_fraction`, `seed`) as `folder:` does. Files are
  PNG or JPEG (`.png/.jpg/.jpeg`, any case; any mode: grayscale, palette, CMYK and alpha
  images are read as RGB). With `check_files`, each file's header is read (not decoded, by
  `num_threads` threads) and files that are not readable images are reported with
  `warnings.warn` and skipped (`on_bad_file="skip"`) or refused (`"raise"`); a class folder
  without readable images is reported the same way and kept as a class (so that class
  indices stay those of the folder names). A file whose body is corrupt past a good header
  is a ValueError naming it when it is decoded. `image_size` is the side of the evaluation
  view (resize + centre crop) and of the training crops.
  """
  _checks.choice("on_bad_file", on_bad_file, ("skip", "raise"))
  image_size = _checks.positive_int("image_size", image_size)
  if num_threads is not None:
    num_threads = _checks.positive_int("num_threads", num_threads)
  if not os.path.exists(path):
    raise FileNotFoundError(f"image folder {path!r} does not exist")
  if not os.path.isdir(path):
    raise NotADirectoryError(f"image folder {path!r} is not a directory")
  top = _class_folders(path)
  # Not None: the train/val layout; None: one folder of classes, split here.
  test_folder = (next((f for f in _SPLIT_FOLDERS["test"] if f in top), None)
                 if "train" in top else None)
  root = os.path.join(path, "train") if test_folder is not None else path
  class_names = _class_folders(root)
  if len(class_names) < 2:
    raise ValueError(f"image folder {root!r} must hold one sub-folder per class and at least 2 "
                     f"classes, found {len(class_names)}: {class_names}")
  list_files = functools.partial(_list_class_files, on_bad_file=on_bad_file,
                                 check_files=check_files, num_threads=num_threads)
  make = functools.partial(FileSplit, image_size=image_size, num_threads=num_threads)
  if test_folder is not None:
    test_root = os.path.join(path, test_folder)
    unknown = sorted(set(_class_folders(test_root)) - set(class_names))
    if unknown:
      raise ValueError(f"image folder {test_root!r} has class folders {unknown} that "
                       f"{root!r} lacks; the classes are train's sub-folders")
    train_files, train_labels = list_files(root, class_names)
    # The evaluation split may lack classes (a held-out subset): not a problem there.
    test_files, test_labels = list_files(test_root, class_names, report_empty=False)
    train, test = make(train_files, train_labels), make(test_files, test_labels)
  else:
    files, labels = list_files(root, class_names)
    train_rows, test_rows = stratified_split(labels, test_fraction=test_fraction, seed=seed,
                                             what=f"imagefolder:{path}")
    paths = np.asarray(files)
    train = make(paths[train_rows], labels[train_rows])
    test = make(paths[test_rows], labels[test_rows])
  return ImageDataset(name=f"imagefolder:{path}", train=train, test=test,
                      num_classes=len(class_names), class_names=tuple(class_names))


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _load_npz(path: str, *, seed: int, num_classes: int | None = None) -> ImageDataset:
  """`x_train, y_train, x_test, y_test` (+ optional `class_names`); `seed` is unused.

  Images `[n, H, W]` or `[n, H, W, C]`, uint8 or float in [0, 1]. Labels are integers in
  `[0, num_classes)`; `num_classes` is the option, else `len(class_names)`, else max label + 1.
  """
  del seed
  if not os.path.exists(path):
    raise FileNotFoundError(f"npz file {path!r} does not exist")
  with np.load(path, allow_pickle=False) as archive:
    missing = [k for k in _NPZ_KEYS if k not in archive.files]
    if missing:
      raise ValueError(f"npz file {path!r} lacks arrays {missing}; it holds {archive.files} "
                       f"and needs {list(_NPZ_KEYS)}")
    arrays = {k: archive[k] for k in _NPZ_KEYS}
    class_names = ([str(c) for c in archive["class_names"]] if "class_names" in archive.files
                   else None)
  splits = {}
  for part in ("train", "test"):
    x_key, y_key = f"x_{part}", f"y_{part}"
    images = arrays[x_key]
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4:
      raise ValueError(f"{x_key} must have shape [n, H, W] or [n, H, W, C], got "
                       f"{images.shape}")
    images = _to_uint8(x_key, images)
    labels = _check_labels(y_key, arrays[y_key])
    if len(labels) != len(images):
      raise ValueError(f"{x_key} and {y_key} must have the same length, got {len(images)} and "
                       f"{len(labels)}")
    splits[part] = ArraySplit(images, labels)
  if splits["train"].image_shape != splits["test"].image_shape:
    raise ValueError(f"x_train and x_test must share the image shape (H, W, C), got "
                     f"{splits['train'].image_shape} and {splits['test'].image_shape}")
  max_label = max(int(s.labels.max(initial=-1)) for s in splits.values())
  if num_classes is None:
    num_classes = len(class_names) if class_names is not None else max_label + 1
  num_classes = _checks.positive_int("num_classes", num_classes)
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f"num_classes={num_classes} but the npz file holds {len(class_names)} "
                     f"class_names")
  if max_label >= num_classes:
    raise ValueError(f"labels must lie in [0, {num_classes}), got a label {max_label}")
  return ImageDataset(name=f"npz:{path}", train=splits["train"], test=splits["test"],
                      num_classes=num_classes,
                      class_names=tuple(class_names or (str(c) for c in range(num_classes))))


class _RecordSplit:
  """A lazy split over a random-access sequence of `{"image": [H, W, C], "label": int}` records.

  Records are read on demand (a TFDS builder's `as_data_source` gives one: ArrayRecord reads,
  decoded with NumPy, no TensorFlow); labels are read once, on first use of `labels`.
  """

  def __init__(self, source: Sequence[dict], image_shape: tuple[int, int, int]):
    self.source = source
    self.image_shape = image_shape

  def __len__(self) -> int:
    return len(self.source)

  @functools.cached_property
  def labels(self) -> np.ndarray:
    return np.array([self.source[i]["label"] for i in range(len(self))], dtype=np.int32)

  def __getitem__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = _check_indices(indices, len(self))
    records = [self.source[int(i)] for i in indices]
    images = np.zeros((len(records), *self.image_shape), np.uint8)
    for row, record in enumerate(records):
      images[row] = record["image"]
    labels = np.array([record["label"] for record in records], dtype=np.int32)
    return images, labels

  def __repr__(self) -> str:
    return f"_RecordSplit(source={self.source!r}, len={len(self)})"


_TFDS_BUILD = "`tfds build {name} --data_dir DIR --file_format array_record`"


def _tfds_is_prepared(builder) -> bool:
  """`builder.is_prepared()`, without its warning log line when the folder does not exist."""
  return builder.data_path.exists() and builder.is_prepared()


def _prepared_tfds_builder(name: str, data_dir: str | None):
  """The TFDS builder of `name`, checked to be prepared, without any network access.

  contrax never downloads: a dataset that is not prepared is a ValueError that says where
  TFDS looked and how to prepare it offline.
  """
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"{str(e).splitlines()[0]} (tfds.list_builders() lists the TFDS "
                     f"dataset names)") from None
  if not _tfds_is_prepared(builder):
    raise ValueError(
        f"TFDS dataset {name!r} is not prepared in the data directory {builder.data_dir_root} "
        f"(TFDS looked for {builder.data_dir}); contrax does not download. Prepare it with "
        f"{_TFDS_BUILD.format(name=name)} on a machine with network access, copy DIR to this "
        f"machine and point to it with the TFDS_DATA_DIR environment variable or the "
        f"data_dir option")
  return builder


def _image_decoders():
  """TFDS decoders that hand the image field over still encoded: `RecordImageSplit` decodes it
  with Pillow, at reduced size where a JPEG allows (`contrax.crops`), and reading a label does
  not decode the image."""
  import tensorflow_datasets as tfds
  return {"image": tfds.decode.SkipDecoding()}


def _load_tfds(name: str, *, seed: int, data_dir: str | None = None,
               train_split: str = "train", test_split: str = "test",
               pretrain_split: str | None = None,
               image_size: int | None = None) -> ImageDataset:
  """TFDS `name` (e.g. `mnist`, `cifar10`, `cifar100`, `stl10`) read lazily, never downloaded.

  The dataset must already be prepared in ArrayRecord format under `data_dir` (default:
  `TFDS_DATA_DIR`, else `~/tensorflow_datasets`): `tfds build NAME --data_dir DIR
  --file_format array_record`. Records are read through the builder's data source (no
  TensorFlow). Needs fields `image` and `label` (a `ClassLabel`); `seed` is unused.

  Images of one fixed shape are read as they are (`image_size=None`). With `image_size` (needed
  when the images vary in size, e.g. `imagenet2012`, `imagenette`), the splits are
  `RecordImageSplit`s: evaluation reads resize + centre crop to `image_size`, training reads
  host-side random-resized crops (`contrax.loader`); their images are decoded by Pillow from
  the stored bytes (at reduced size where a JPEG allows), never by TensorFlow.

  `pretrain_split` (default: `train_split`) is the split pre-training reads, in TFDS split
  syntax: STL-10's self-supervised protocol pre-trains on `"train+unlabelled"` (105,000
  images, the 100,000 unlabelled ones labelled -1) and evaluates on `train` / `test`.
  """
  del seed
  builder = _prepared_tfds_builder(name, data_dir)
  parts = [("train", train_split), ("test", test_split)]
  if pretrain_split is not None:
    parts.append(("pretrain", pretrain_split))
  decoders = _image_decoders() if image_size is not None else None
  try:
    sources = {part: builder.as_data_source(split=split, decoders=decoders)
               for part, split in parts}
  except NotImplementedError:  # prepared in a format without random access (tfrecord)
    raise ValueError(
        f"TFDS dataset {name!r} in {builder.data_dir} is stored as "
        f"{builder.info.file_format.value}, which has no random access; contrax reads "
        f"array_record. Rebuild it with {_TFDS_BUILD.format(name=name)}") from None
  features = builder.info.features
  for key in ("image", "label"):
    if key not in features:
      raise ValueError(f"TFDS dataset {name!r} has no field {key!r}; its fields are "
                       f"{list(features.keys())}")
  image_shape = tuple(features["image"].shape)
  if image_size is None and (len(image_shape) != 3 or None in image_shape):
    raise ValueError(f"TFDS dataset {name!r} has images of shape {image_shape} (their size "
                     f"varies); pass image_size (the training resolution, e.g. 224) to crop "
                     f"them to one size")
  label = features["label"]
  if not hasattr(label, "names"):
    raise ValueError(f"TFDS dataset {name!r}: field 'label' must be a ClassLabel, got {label}")
  splits: dict[str, Split]
  if image_size is not None:
    splits = {part: RecordImageSplit(sources[part], image_size=image_size) for part in sources}
  else:
    splits = {part: _RecordSplit(sources[part], image_shape) for part in sources}
  return ImageDataset(name=f"tfds:{name}", train=splits["train"], test=splits["test"],
                      pretrain=splits.get("pretrain", splits["train"]),
                      num_classes=int(label.num_classes), class_names=tuple(label.names))


_SOURCES: dict[str, Callable[..., ImageDataset]] = {
    "digits": _load_digits,
    "synthetic": _load_synthetic,
    "folder": _load_folder,
    "npz": _load_npz,
    "tfds": _load_tfds,
    "imagefolder": _load_imagefolder,
}
_SOURCES_WITH_ARGUMENT = ("folder", "npz", "tfds", "imagefolder")
SOURCES = tuple(_SOURCES)  # the valid source names, for eager config checks


def _source_options(loader: Callable) -> list[str]:
  return [p.name for p in inspect.signature(loader).parameters.values()
          if p.kind == p.KEYWORD_ONLY and p.name != "seed"]


def load(spec: str, *, seed: int = 0, **options) -> ImageDataset:
  """The dataset named by `spec`: `digits`, `synthetic`, `folder:PATH`, `npz:PATH`, `tfds:NAME`,
  `imagefolder:PATH`.

  `seed` fixes every random choice of the source (train/test split, synthetic images).
  Options by source:
    digits: test_fraction=0.25 (stratified split of the 1,797 images).
    synthetic: num_classes=10, image_shape=(8, 8, 1), num_train=1000, num_test=200, spread=0.1.
    folder: test_fraction=0.1, on_bad_file="skip" | "raise", num_threads=None (a default pool).
    npz: num_classes=None (from `class_names` in the file, else max label + 1).
    tfds: data_dir=None (TFDS_DATA_DIR, else ~/tensorflow_datasets), train_split="train",
      test_split="test", pretrain_split=None (the split pre-training reads, e.g.
      "train+unlabelled" for STL-10; default train_split), image_size=None (needed for images
      of varying size); the dataset must be prepared there (it is never downloaded).
    imagefolder: image_size=224, test_fraction=0.1 (single-folder layout), on_bad_file="skip"
      | "raise", check_files=True (read each file's header at start-up), num_threads=None.
  """
  if not isinstance(spec, str):
    raise TypeError(f"spec must be a string such as 'digits' or 'folder:PATH', got {spec!r}")
  kind, has_argument, argument = spec.partition(":")
  _checks.choice("data source", kind, _SOURCES)
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
  loader = _SOURCES[kind]
  allowed = _source_options(loader)
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown} for data source {kind!r}; valid options: "
                     f"{allowed}")
  if kind in _SOURCES_WITH_ARGUMENT:
    if not argument:
      raise ValueError(f"data source {kind!r} needs an argument: '{kind}:...', got {spec!r}")
    return loader(argument, seed=int(seed), **options)
  if has_argument:
    raise ValueError(f"data source {kind!r} takes no argument after ':', got {spec!r}")
  return loader(seed=int(seed), **options)


# ----------------------------------------------------------------------------- iteration


def batches(split: Split, *, batch_size: int, seed: int, start_step: int = 0,
            process_index: int = 0, process_count: int = 1
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless `(images, labels)` batches of `split` for process `process_index`.

  Step `s` reads epoch `e = s // S` with `S = len(split) // batch_size` steps per epoch (the
  remainder of each epoch is dropped): global rows `perm_e[(s % S) B : (s % S + 1) B]` with
  `perm_e = np.random.default_rng([seed, e]).permutation(len(split))`. Process `p` of `P`
  yields the contiguous slice `[p B/P : (p+1) B/P]` of that global batch, so the processes
  together cover it exactly. A pure function of `(seed, step)`: `start_step=k` yields what
  the k-th item of a fresh iterator would (resume).
  """
  batch_size = _checks.positive_int("batch_size", batch_size)
  process_count = _checks.positive_int("process_count", process_count)
  for name, value in (("seed", seed), ("start_step", start_step),
                      ("process_index", process_index)):
    _checks.integer_at_least(name, value, 0)
  num_rows = len(split)
  _checks.process_slice(batch_size, process_count, process_index, num_rows)
  return _batches(split, batch_size, int(seed), int(start_step), int(process_index),
                  int(process_count))


def _batches(split: Split, batch_size: int, seed: int, start_step: int, process_index: int,
             process_count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  steps_per_epoch = len(split) // batch_size
  local = batch_size // process_count
  local_start = process_index * local
  epoch = start_step // steps_per_epoch
  permutation = np.random.default_rng([seed, epoch]).permutation(len(split))
  step = start_step
  while True:
    if step // steps_per_epoch != epoch:
      epoch = step // steps_per_epoch
      permutation = np.random.default_rng([seed, epoch]).permutation(len(split))
    start = (step % steps_per_epoch) * batch_size + local_start
    yield split[permutation[start:start + local]]
    step += 1


_ITEM, _END, _ERROR = "item", "end", "error"


def prefetch(iterator: Iterable[Any], size: int = 2) -> Generator[Any, None, None]:
  """The items of `iterator`, produced up to `size` ahead by a background thread.

  Overlaps host-side batch loading with device compute. An exception raised by `iterator`
  is re-raised (with its traceback) at the item where it occurred; closing or dropping the
  returned generator stops the thread at its next item.
  """
  size = _checks.positive_int("size", size)
  iterator = iter(iterator)
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(entry) -> bool:
    while not stop.is_set():
      try:
        items.put(entry, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterator:
        if not put((_ITEM, item)):
          return
      put((_END, None))
    except BaseException as e:  # handed to the consumer, which re-raises it
      put((_ERROR, e))

  threading.Thread(target=produce, name="contrax-prefetch", daemon=True).start()

  def consume():
    try:
      while True:
        kind, value = items.get()
        if kind == _END:
          return
        if kind == _ERROR:
          raise value
        yield value
    finally:
      stop.set()

  return consume()
