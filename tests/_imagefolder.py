"""A generated ImageNet-style folder of variable-size photos, for the lazy-source tests."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

# (height, width) of the generated images, 20x30 .. 500x375 (ImageNet's typical 375x500).
SIZES = [(20, 30), (37, 64), (64, 48), (96, 96), (120, 80), (150, 200), (240, 320),
         (375, 500), (500, 375), (33, 21)]
MODES = ["RGB", "L", "CMYK", "RGBA", "P"]


def photo(rng: np.random.Generator, height: int, width: int, mode: str) -> Image.Image:
  """A smooth random image (a few colour gradients) in PIL `mode`."""
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  coeffs = rng.uniform(-1, 1, (3, 3))
  rgb = np.stack([np.clip(128 + 120 * np.sin(3 * (a * x + b * y) + c), 0, 255)
                  for a, b, c in coeffs], axis=-1).astype(np.uint8)
  image = Image.fromarray(rgb)
  return image.convert(mode) if mode != "RGB" else image


def make_imagefolder(root, *, classes=("ant", "bee", "cat"), per_class=(8, 2), seed=0,
                     corrupt=True, empty_class="dog", extras=True) -> dict:
  """`root/{train,val}/<class>/*` JPEGs and PNGs of the sizes and modes above; a corrupt
  `.jpg`, a text file and an empty class folder in train (if asked). Returns
  `{"train": [(path, label)], "val": [...], "bad": [paths]}` of the readable files."""
  rng = np.random.default_rng(seed)
  out = {"train": [], "val": [], "bad": []}
  k = 0
  for part, count in zip(("train", "val"), per_class):
    for label, name in enumerate(classes):
      folder = os.path.join(root, part, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        h, w = SIZES[k % len(SIZES)]
        mode = MODES[k % len(MODES)]
        k += 1
        image = photo(rng, h, w, mode)
        jpeg = mode == "CMYK" or (mode in ("RGB", "L") and i % 2 == 0)
        path = os.path.join(folder, f"{name}_{i:03d}.{'JPEG' if jpeg else 'png'}")
        image.save(path, format="JPEG" if jpeg else "PNG", quality=90)
        out[part].append((path, label))
  if corrupt:
    bad = os.path.join(root, "train", classes[0], "broken.jpg")
    with open(bad, "wb") as f:
      f.write(b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(rng.integers(0, 256, 64, np.uint8)))
    out["bad"].append(bad)
  if extras:
    notes = os.path.join(root, "train", classes[1], "README.txt")
    with open(notes, "w") as f:
      f.write("not an image")
    out["bad"].append(notes)
  if empty_class:
    os.makedirs(os.path.join(root, "train", empty_class), exist_ok=True)
  return out
