"""experiments/mutual_information.py and its parts (experiments/mi_*.py) at tiny size.

Its notebook is executed by tests/test_notebooks.py.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from contrax import mi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


sys.path.insert(0, os.path.join(ROOT, "experiments"))
import mi_infomin  # noqa: E402
import mi_small_batch  # noqa: E402
import mutual_information as exp  # noqa: E402


def test_small_batch_task_attains_the_configured_mi():
  c = exp.get_config().small_batch
  rho = mi_small_batch.small_batch_rho(c)
  best = np.eye(c.dim)[:c.features]  # the strongest `features` dimensions
  assert mi.linear_features_mi(rho, best) == pytest.approx(c.attainable_mi_nats, rel=1e-9)
  assert mi.gaussian_mi(rho) == pytest.approx(
      c.attainable_mi_nats + (c.dim - c.features) * c.weak_mi_nats, rel=1e-9)
  # any other 4-d linear map carries less
  w = np.random.default_rng(0).normal(size=(c.features, c.dim))
  assert mi.linear_features_mi(rho, w) < c.attainable_mi_nats


def test_infomin_flip_probs_share_the_requested_bits():
  probs = mi_infomin.infomin_flip_probs(4, 4, 3, 1)
  np.testing.assert_array_equal(probs, [0, 0, 0, 0.5, 0, 0.5, 0.5, 0.5])
  assert mi.label_channel_mi(8, probs, unit="bits") == pytest.approx(4.0)


def test_invalid_config_is_rejected_naming_the_field():
  config = exp.tiny_config()
  config.parts = ("staircase", "nope")
  with pytest.raises(ValueError, match="parts"):
    exp.validate_config(config)
  config = exp.tiny_config()
  config.staircase.critics = ("quadratic",)
  with pytest.raises(ValueError, match="staircase.critics"):
    exp.validate_config(config)
  config = exp.tiny_config()
  config.measure.estimator = "mine2"
  with pytest.raises(ValueError, match="measure.estimator"):
    exp.validate_config(config)


def test_staircase_script_runs_alone_at_tiny_size(tmp_path):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "mi_staircase.py"),
       f"--workdir={workdir}", "--config.progress=false",
       "--config.chunk=10", "--config.staircase.levels_nats=1.0,3.0", "--config.staircase.dim=4",
       "--config.staircase.batch_sizes=8", "--config.staircase.critics=bilinear",
       "--config.staircase.steps_per_level=10"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"run directory: {os.path.abspath(workdir)}" in done.stdout
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["parts"] == ["staircase"] and config["staircase"]["batch_sizes"] == [8]
  assert config["name"] == "mi_staircase" and "measure" not in config
  assert config["staircase"]["levels_nats"] == [1.0, 3.0] and config["chunk"] == 10
  for name in ("config.json", "staircase.json", "staircase.md", "staircase_b8.png",
               "summary.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  result = json.load(open(os.path.join(workdir, "staircase.json")))
  assert len(result["table"]) == 2 * len(mi.ESTIMATORS)
  for row in result["table"]:
    if row["estimator"] == "infonce":
      assert row["mean_nats"] <= math.log(8) + 1e-6
  assert "could not be read" in open(os.path.join(workdir, "staircase.md")).read()
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["staircase"]["best_overall"] in mi.ESTIMATORS


@pytest.mark.slow
def test_every_part_runs_end_to_end_at_tiny_size(tmp_path):
  workdir = str(tmp_path / "run")
  config = exp.tiny_config()
  summary = exp.run(config, workdir)
  for name in ("config.json", "summary.json", "staircase.json", "staircase.md",
               "staircase_b16.png", "small_batch.json", "small_batch.md", "small_batch.png",
               "measure.json", "measure.md", "measure.png", "infomin.json", "infomin.md",
               "infomin.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert "could not be read" in summary["note"]
  for row in summary["small_batch"]["rows"]:
    assert row["train_infonce_nats"] <= math.log(row["batch_size"]) + 1e-6
    assert row["exact_mi_nats"] <= config.small_batch.attainable_mi_nats + 1e-9
  measure = json.load(open(os.path.join(workdir, "measure.json")))
  assert measure["ceiling_nats"] == pytest.approx(
      mi.label_channel_mi(config.measure.num_bits, config.measure.flip_prob))
  assert measure["estimator"] == summary["staircase"]["best_overall"]
  assert len(measure["rows"]) == len(config.measure.embed_dims) * len(config.measure.checkpoints)
  infomin = json.load(open(os.path.join(workdir, "infomin.json")))
  for row in infomin["rows"]:
    assert row["view_mi_bits"] == pytest.approx(row["shared_task_bits"]
                                                + row["shared_nuisance_bits"])
    assert 0.0 <= row["task_accuracy"] <= 1.0
