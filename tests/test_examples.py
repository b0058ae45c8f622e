"""The programs in examples/ run as written, at a few steps (on the 8 virtual devices of
tests/conftest.py for the pod example)."""
from __future__ import annotations

import importlib.util
import math
import os
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
  spec = importlib.util.spec_from_file_location(
      f"example_{name}", os.path.join(ROOT, "examples", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses (Flax modules) look their module up by name
  spec.loader.exec_module(module)
  return module


def test_simclr_in_your_own_loop():
  accuracy = load("simclr_own_loop").main(steps=3, batch_size=64)
  assert 0.0 <= accuracy <= 1.0


def test_hard_negatives_in_your_own_loop():
  losses = load("hard_negatives_own_loop").main(steps=3, batch_size=64)
  assert len(losses) == 3 and all(math.isfinite(v) for v in losses)


def test_pod_training_on_every_device_and_resume(tmp_path):
  example = load("pod_training")
  first = example.main(str(tmp_path), steps=2)
  assert first["devices"] == len(jax.devices()) == 8 and first["steps"] == 2
  resumed = example.main(str(tmp_path), steps=3, resume=True)
  assert resumed["steps"] == 3
