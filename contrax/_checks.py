"""Eager argument checks shared by the whole library.

Every public function validates its inputs before tracing, and a bad input raises a
`ValueError` (or `TypeError`) that names the argument, the value and what is allowed.

Real hyper-parameters (`positive`, `non_negative`, `in_range`) may be Python numbers,
0-d arrays or tracers: a concrete value is checked and returned as a Python float; a traced
one (a learnable temperature under `grad`, a value passed into a jitted step) cannot be
inspected and is returned unchanged.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import jax
import numpy as np


def _real(name: str, value):
  """`(float(value), False)` for a concrete real scalar, `(value, True)` for a tracer."""
  if isinstance(value, jax.core.Tracer):
    if np.ndim(value) != 0:
      raise TypeError(f"{name} must be a scalar, got a traced array of shape {np.shape(value)}")
    return value, True
  if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
    raise TypeError(f"{name} must be a real number, got {value!r}")
  try:
    array = np.asarray(value)
  except TypeError as e:
    raise TypeError(f"{name} must be a real number, got {value!r}") from e
  if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
    raise TypeError(f"{name} must be a real number, got {value!r}")
  return float(array), False


def positive(name: str, value: float) -> float:
  """`value > 0` and finite, else ValueError (a traced value passes unchecked)."""
  number, traced = _real(name, value)
  if traced:
    return number
  if not np.isfinite(number) or number <= 0:
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
  return number


def non_negative(name: str, value: float) -> float:
  """`value >= 0` and finite, else ValueError (a traced value passes unchecked)."""
  number, traced = _real(name, value)
  if traced:
    return number
  if not np.isfinite(number) or number < 0:
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
  return number


def in_range(name: str, value: float, low: float, high: float, *,
             include_low: bool = True, include_high: bool = False) -> float:
  """`value` in the interval [low, high) (brackets set by the flags), else ValueError (a
  traced value passes unchecked)."""
  value, traced = _real(name, value)
  if traced:
    return value
  ok_low = value >= low if include_low else value > low
  ok_high = value <= high if include_high else value < high
  if not (np.isfinite(value) and ok_low and ok_high):
    lb = "[" if include_low else "("
    hb = "]" if include_high else ")"
    raise ValueError(f"{name} must lie in {lb}{low}, {high}{hb}, got {value!r}")
  return value


def check_temperature(temperature: float) -> float:
  """A temperature t > 0: a number, a 0-d array, or a tracer (learnable or jitted)."""
  return positive("temperature", temperature)


def check_tau_plus(tau_plus: float) -> float:
  """The debiasing class prior τ⁺ in [0, 1) (Chuang et al. 2020)."""
  return in_range("tau_plus", tau_plus, 0.0, 1.0)


def integer_at_least(name: str, value: object, low: int) -> int:
  """A Python/NumPy integer >= `low`, else ValueError (TypeError for anything but an integer)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an integer, got {value!r}")
  if value < low:
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
  return int(value)


def positive_int(name: str, value: object) -> int:
  """A Python/NumPy integer >= 1, else ValueError (TypeError for anything but an integer)."""
  return integer_at_least(name, value, 1)


def process_slice(batch_size: int, process_count: int, process_index: int,
                  num_rows: int) -> None:
  """This process's share of a global batch exists: `process_index` in `[0, process_count)`,
  `batch_size` divisible by `process_count` and at most the split's `num_rows`."""
  if process_index >= process_count:
    raise ValueError(f"process_index must lie in [0, process_count={process_count}), got "
                     f"{process_index}")
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be divisible by "
                     f"process_count={process_count}")
  if batch_size > num_rows:
    raise ValueError(f"batch_size={batch_size} exceeds the split's {num_rows} rows")


def choice(name: str, value, choices: Iterable):
  """`value` is one of `choices`, else ValueError listing them."""
  choices = list(choices)
  if value not in choices:
    raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(map(repr, choices))}")
  return value


def rank(name: str, array, expected_rank: int):
  """`array.ndim == expected_rank`, else ValueError with the shape."""
  if np.ndim(array) != expected_rank:
    raise ValueError(f"{name} must have rank {expected_rank}, got shape {np.shape(array)}")
  return array


def same_shape(names: Sequence[str], *arrays):
  """All arrays have one shape, else ValueError naming them."""
  shapes = [np.shape(a) for a in arrays]
  if any(s != shapes[0] for s in shapes[1:]):
    pairs = ", ".join(f"{n}{s}" for n, s in zip(names, shapes))
    raise ValueError(f"{' and '.join(names)} must have the same shape, got {pairs}")
  return arrays


def labels(name: str, values, *, size: int | None = None,
           num_classes: int | None = None) -> np.ndarray:
  """Integer class labels `[n]` with values in `[0, num_classes)` (`>= 0` when None).

  TypeError for a non-integer dtype, ValueError for a wrong rank, a size other than `size`
  (when given) or a value out of range; returns the labels as a NumPy array.
  """
  values = np.asarray(values)
  if not np.issubdtype(values.dtype, np.integer):
    raise TypeError(f"{name} must hold integers (integer class labels), got dtype {values.dtype}")
  rank(name, values, 1)
  if size is not None and values.shape[0] != size:
    raise ValueError(f"{name} must have shape ({size},) (one label per row), got {values.shape}")
  if values.size and values.min() < 0:
    raise ValueError(f"{name} must be >= 0, got a label {values.min()}")
  if values.size and num_classes is not None and values.max() >= num_classes:
    raise ValueError(f"{name} must lie in [0, {num_classes}), got range "
                     f"[{values.min()}, {values.max()}]")
  return values
