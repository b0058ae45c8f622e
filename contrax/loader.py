"""The Grain loader of variable-size images: host-side crops, worker processes, resumable.

`crop_batches(split, ...)` turns a `contrax.data.LazyImageSplit` (an `imagefolder:` or a
variable-size TFDS dataset) into Grain's checkpointable iterator of per-process training
batches `(crops uint8 [B/P, V, S, S, 3], labels int32 [B/P])`: V random-resized crops
(`contrax.crops`) of side S per image, cut on the host since shapes must be static on device;
flip, colour, blur and the rest stay on device (`contrax.augment.two_views` takes the V crops
as the views). Fixed-size sources do not come here (`contrax.data.batches`: no host cost).

Order (the one `contrax.data.batches` uses for in-memory data, so a run is a pure function of
its seed): step s reads epoch e = s // S_e, S_e = len(split) // B steps per epoch (the rest of
each epoch is dropped), global rows `perm_e[(s % S_e) B : (s % S_e + 1) B]` with `perm_e =
np.random.default_rng([seed, e]).permutation(len(split))`; process p of P reads the slice
`[p B/P : (p+1) B/P]` of them (per-host sharding by `jax.process_index()` /
`jax.process_count()`). The crops of the sample at global batch position g of step s come
from `np.random.default_rng([seed, 1, s, g])`: they do not depend on the number of processes
or workers.

Grain (`grain.MapDataset`: a random-access index -> sample map, `batch`, then
`mp_prefetch` over `num_workers` worker processes) does the parallel decoding, prefetching
and bookkeeping: its iterator's state (`get_state`/`set_state`; the next element, which
`mp_prefetch` keeps consistent with what the consumer has taken, not what the workers have
made) is saved with each orbax checkpoint (`contrax.runs`), so a resumed run reads exactly the
batches the uninterrupted one would have.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from contrax import _checks, crops

__all__ = ["crop_batches", "epoch_rows"]


def epoch_rows(num_rows: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the rows in `epoch`: `default_rng([seed, epoch]).permutation(num_rows)`."""
  return np.random.default_rng([seed, epoch]).permutation(num_rows)


class _CropSample:
  """Element k of a process's stream -> `(crops [V, S, S, 3], label, row)` (picklable: it is
  sent to Grain's worker processes)."""

  def __init__(self, split, *, batch_size: int, seed: int, image_size: int, num_crops: int,
               scale: tuple[float, float], ratio: tuple[float, float], process_index: int,
               process_count: int):
    self.split = split
    self.batch_size, self.seed = batch_size, seed
    self.image_size, self.num_crops, self.scale, self.ratio = image_size, num_crops, scale, ratio
    self.local = batch_size // process_count
    self.offset = process_index * self.local
    self.steps_per_epoch = len(split) // batch_size

  @functools.lru_cache(maxsize=2)  # one permutation per epoch and worker, not per sample
  def _rows(self, epoch: int) -> np.ndarray:
    return epoch_rows(len(self.split), self.seed, epoch)

  def __call__(self, k: int):
    step, j = divmod(int(k), self.local)
    position = self.offset + j  # in the global batch
    epoch, in_epoch = divmod(step, self.steps_per_epoch)
    row = int(self._rows(epoch)[in_epoch * self.batch_size + position])
    rng = np.random.default_rng([self.seed, 1, step, position])
    try:
      with self.split.open(row) as image:
        views = crops.random_resized_crops(image, rng, size=self.image_size,
                                           num_crops=self.num_crops, scale=self.scale,
                                           ratio=self.ratio)
    except OSError as e:  # a body corrupt past a good header: name the image
      raise ValueError(f"cannot decode image {row} of {self.split!r}"
                       f"{_path_of(self.split, row)}: {e}") from e
    return views, np.int32(self.split.label(row)), np.int64(row)


def _path_of(split, row: int) -> str:
  paths = getattr(split, "paths", None)
  return f" ({paths[row]})" if paths is not None else ""


def _check_pair(name: str, value, low: float, high: float) -> tuple[float, float]:
  return crops.check_range(name, value, low, high)


def crop_batches(split, *, batch_size: int, seed: int, num_steps: int, image_size: int,
                 num_crops: int = 2, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), process_index: int = 0,
                 process_count: int = 1, num_workers: int = 0, buffer_size: int = 2,
                 read_threads: int = 4, with_rows: bool = False):
  """Grain's iterator of this process's batches for steps `0 .. num_steps - 1` (module
  docstring): `(crops uint8 [B/P, V, S, S, 3], labels int32 [B/P])`, plus the split's row
  indices int64 `[B/P]` if `with_rows`.

  `num_workers` decoding processes (0: decode in this process), each handing over up to
  `buffer_size` finished batches; within each, `read_threads` threads make whole batches in
  parallel (Grain's `ReadOptions`; Pillow releases the GIL while it decodes and resizes), so
  up to `read_threads + buffer_size` batches per worker are in memory. Batches, not samples,
  are spread over threads and workers, so a batch never depends on how many there are.

  Resume with the iterator's `set_state` (what `contrax.runs.restore` does with the state
  saved in the checkpoint); a new iterator starts at step 0.
  """
  import grain
  batch_size = _checks.positive_int("batch_size", batch_size)
  num_steps = _checks.positive_int("num_steps", num_steps)
  image_size = _checks.positive_int("image_size", image_size)
  num_crops = _checks.positive_int("num_crops", num_crops)
  process_count = _checks.positive_int("process_count", process_count)
  buffer_size = _checks.positive_int("buffer_size", buffer_size)
  read_threads = _checks.positive_int("read_threads", read_threads)
  scale = _check_pair("crop_scale", scale, 0.0, 1.0)
  ratio = _check_pair("crop_ratio", ratio, 0.0, float("inf"))
  for name, value in (("seed", seed), ("process_index", process_index),
                      ("num_workers", num_workers)):
    _checks.integer_at_least(name, value, 0)
  _checks.process_slice(batch_size, process_count, process_index, len(split))
  sample = _CropSample(split, batch_size=batch_size, seed=int(seed), image_size=image_size,
                       num_crops=num_crops, scale=scale, ratio=ratio,
                       process_index=int(process_index), process_count=process_count)
  local = batch_size // process_count
  ds = grain.MapDataset.range(num_steps * local).map(sample)
  if not with_rows:
    ds = ds.map(_drop_rows)
  ds = ds.batch(local, drop_remainder=True).to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_threads))
  if num_workers:
    _absl_flags_defaults()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(num_workers),
                                                     per_worker_buffer_size=buffer_size))
  return iter(ds)


def _absl_flags_defaults() -> None:
  """Grain's worker start-up reads absl flags (its profiler switch), which a program that does
  not run `absl.app` has never parsed (UnparsedFlagAccessError): take their defaults then."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _drop_rows(item):
  views, label, _ = item
  return views, label
