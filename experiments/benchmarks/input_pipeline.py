"""Benchmark: the Grain loader of variable-size photos, images/s vs worker processes, and peak
host memory vs the number of files.

A generated ImageNet-like folder (`num_images` JPEGs of `photo_hw`, quality 90, in 4 classes,
`imagefolder:` layout) is read by `contrax.loader.crop_batches`: per image `num_crops`
random-resized crops (SimCLR's, scale 0.08-1) decoded with Pillow (JPEG draft: reduced-size
DCT decode where the crops allow) and resized to `image_size`. Each case runs in a fresh
process (`_harness.run_isolated`): the first batch (worker start-up, imports) and the batches
the buffers filled meanwhile are not timed, then `batches` batches of `batch_size` images are;
images/s counts images (each with its `num_crops` crops). Cases: `workers` = 0 (decode in
the main process) and 1, 2 Grain worker processes, each with `read_threads` decoding threads
(1: one core per worker). A PyTorch
`DataLoader` + torchvision `RandomResizedCrop` peer runs on the same files only when torch and
torchvision are installed (`pip install -e '.[bench]'`); otherwise its column says so.

Memory: with `memory_images` and 10x as many small files (`memory_hw`), one epoch read in the
main process; peak RSS of the process (`getrusage`) should not grow with the file count
beyond the file list (a path and a label per file): nothing is decoded ahead beyond the
loader's buffers.

    python experiments/benchmarks/input_pipeline.py                    # about 3 minutes
    python experiments/benchmarks/input_pipeline.py --config.num_images=2048 --config.batches=16

Writes runs/input_pipeline/ (or --workdir): config.json, results.json, results.md (the
table), summary.json. Results: README.md.
"""
from __future__ import annotations

import os
import tempfile
import time

import _harness
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "input_pipeline"
  c.num_images = 256
  c.photo_hw = (375, 500)   # ImageNet's most common size
  c.image_size = 224
  c.num_crops = 2
  c.batch_size = 32
  c.batches = 8             # timed batches per case, after the untimed warm-up
  c.workers = (0, 1, 2)
  c.read_threads = 1
  c.memory_images = 500     # memory cases: this many and 10x as many small files
  c.memory_hw = (24, 32)
  c.memory_batch = 50
  c.data_dir = ""           # "" = a temporary folder, generated
  c.seed = 0
  return c


def make_folder(root: str, num_images: int, hw, seed: int) -> str:
  """`root/train/c{k}/*.JPEG` (4 classes) plus a small `val/`; returns root."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(seed)
  h, w = hw
  y, x = np.mgrid[0:h, 0:w] / max(h, w)
  for part, n in (("train", num_images), ("val", 8)):
    for i in range(n):
      folder = os.path.join(root, part, f"c{i % 4}")
      os.makedirs(folder, exist_ok=True)
      a, b, c = rng.uniform(-8, 8, 3)
      base = np.stack([128 + 100 * np.sin(a * x + b * y + c + k) for k in range(3)], -1)
      noise = rng.normal(0, 12, base.shape)
      Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(
          os.path.join(folder, f"{i:06d}.JPEG"), quality=90)
  return root


def measure(case: dict) -> dict:
  """One case in this (fresh) process."""
  import numpy as np

  from contrax import data, loader
  record = dict(case)
  ds = data.load(f"imagefolder:{case['root']}", image_size=case["image_size"],
                 check_files=False)
  if case["kind"] == "torch":
    return dict(record, **_torch_case(case, ds.train))
  # Untimed: the first batch (worker start-up), then as many as the buffers hold (made while
  # the workers started), so that the timed batches are made while they are waited for.
  buffered = (2 + case["read_threads"]) * max(1, case["workers"])
  steps = 1 + buffered + case["batches"]
  it = loader.crop_batches(ds.train, batch_size=case["batch_size"], seed=case["seed"],
                           num_steps=steps, image_size=case["image_size"],
                           num_crops=case["num_crops"], num_workers=case["workers"],
                           read_threads=case["read_threads"], buffer_size=2)
  start = time.perf_counter()
  first, _ = next(it)
  record["first_batch_seconds"] = time.perf_counter() - start
  for _ in range(buffered):
    next(it)
  start = time.perf_counter()
  checksum = 0
  for _ in range(case["batches"]):
    images, _ = next(it)
    checksum += int(images[:, :, 0, 0, 0].sum())
  seconds = time.perf_counter() - start
  it.close()
  assert first.shape[1:] == (case["num_crops"], case["image_size"], case["image_size"], 3)
  record.update(status="ok", seconds=seconds,
                images_per_second=case["batches"] * case["batch_size"] / seconds,
                peak_rss_mib=_harness.peak_rss_bytes() / _harness.MIB, checksum=checksum)
  del np
  return record


def _torch_case(case: dict, split) -> dict:
  torch, torchvision, note = _harness.import_torch()
  if torch is None:
    return dict(status="skipped", note=note)
  from PIL import Image
  from torchvision.transforms import v2
  crop = v2.RandomResizedCrop(case["image_size"], scale=(0.08, 1.0), antialias=True)

  class Files(torch.utils.data.Dataset):
    def __len__(self):
      return len(split)

    def __getitem__(self, i):
      with Image.open(split.paths[i]) as image:
        image = image.convert("RGB")
        return torch.stack([v2.functional.pil_to_tensor(crop(image))
                            for _ in range(case["num_crops"])])

  workers = case["workers"]
  loader = torch.utils.data.DataLoader(Files(), batch_size=case["batch_size"], shuffle=True,
                                       num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0)

  def endless():  # epochs back to back, as contrax's loader runs `num_steps` across epochs
    while True:
      yield from loader

  it = endless()
  # Untimed as for contrax: the first batch, then what the workers prefetched meanwhile
  # (torch's default prefetch_factor = 2 batches per worker).
  for _ in range(1 + 2 * max(1, workers)):
    next(it)
  start = time.perf_counter()
  for _ in range(case["batches"]):
    next(it)
  seconds = time.perf_counter() - start
  return dict(status="ok", seconds=seconds,
              images_per_second=case["batches"] * case["batch_size"] / seconds)


def memory_case(case: dict) -> dict:
  """One epoch of a folder of small files in the main process: peak RSS."""
  from contrax import data, loader
  ds = data.load(f"imagefolder:{case['root']}", image_size=case["image_size"],
                 check_files=False)
  steps = len(ds.train) // case["batch_size"]
  it = loader.crop_batches(ds.train, batch_size=case["batch_size"], seed=0, num_steps=steps,
                           image_size=case["image_size"], read_threads=2)
  for _ in range(steps):
    next(it)
  it.close()
  return dict(case, status="ok", files=len(ds.train),
              peak_rss_mib=_harness.peak_rss_bytes() / _harness.MIB)


def _measure(case: dict) -> dict:
  return memory_case(case) if case["kind"] == "memory" else measure(case)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    root = config.data_dir or make_folder(os.path.join(tmp, "photos"), config.num_images,
                                          tuple(config.photo_hw), config.seed)
    records = []
    base = dict(root=root, image_size=config.image_size, num_crops=config.num_crops,
                batch_size=config.batch_size, batches=config.batches, seed=config.seed,
                read_threads=config.read_threads)
    for kind in ("contrax", "torch"):
      for workers in config.workers:
        records.append(_harness.run_isolated(__file__, dict(base, kind=kind, workers=workers),
                                             env={"JAX_PLATFORMS": "cpu"}))
        print({k: v for k, v in records[-1].items() if k not in ("error", "root")}, flush=True)
        if records[-1]["status"] == "failed":
          print(records[-1]["error"])
        if records[-1]["status"] == "skipped":
          break
    for factor in (1, 10):
      small = make_folder(os.path.join(tmp, f"small{factor}"), config.memory_images * factor,
                          tuple(config.memory_hw), config.seed)
      records.append(_harness.run_isolated(__file__, dict(
          kind="memory", root=small, image_size=16, batch_size=config.memory_batch,
          factor=factor),
          env={"JAX_PLATFORMS": "cpu"}))
      print({k: v for k, v in records[-1].items() if k not in ("error", "root")}, flush=True)
  for r in records:
    r.pop("root", None)
  text = table(records, config)
  ok = {(r["kind"], r.get("workers")): r for r in records if r["status"] == "ok"}
  memory = {r["factor"]: r for r in records if r["kind"] == "memory" and r["status"] == "ok"}
  summary = {
      "images_per_second": {f"{kind} workers={w}": r["images_per_second"]
                            for (kind, w), r in ok.items() if kind != "memory"},
      "peak_rss_mib_by_files": {str(r["files"]): r["peak_rss_mib"] for r in memory.values()},
  }
  return _harness.write(workdir, config, records, text, summary)


def table(records: list[dict], config) -> str:
  lines = [f"Random-resized crops to {config.image_size} px, {config.num_crops} per image, "
           f"from {tuple(config.photo_hw)} JPEGs; batch {config.batch_size}, "
           f"{config.batches} timed batches; read_threads={config.read_threads}.", "",
           "| loader | workers | images/s | first batch (s) | peak RSS main (MiB) |",
           "|---|---|---|---|---|"]
  for r in records:
    if r["kind"] == "memory":
      continue
    name = "contrax (Grain)" if r["kind"] == "contrax" else "torch DataLoader"
    if r["status"] != "ok":
      lines.append(f"| {name} | {r.get('workers', '')} | {r['status']}: "
                   f"{r.get('note', '')} | | |")
      continue
    first = f"{r['first_batch_seconds']:.1f}" if "first_batch_seconds" in r else ""
    rss = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else ""
    lines.append(f"| {name} | {r['workers']} | {r['images_per_second']:.1f} | {first} | {rss} |")
  lines += ["", "| files (small JPEGs, one epoch) | peak RSS (MiB) |", "|---|---|"]
  for r in records:
    if r["kind"] == "memory" and r["status"] == "ok":
      lines.append(f"| {r['files']} | {r['peak_rss_mib']:.0f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  _harness.main(get_config, run, _measure)
