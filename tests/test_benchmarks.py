"""experiments/benchmarks/: the harness against independent numbers, and every benchmark at a
tiny size end to end (files written, losses against the contrax loss they time)."""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                     "benchmarks")
sys.path.insert(0, BENCH)
import _harness  # noqa: E402


def load(name):
  """experiments/benchmarks/<name>.py by path (experiments/ has studies of the same names)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_time_calls_interleaves_and_skips_the_warmup():
  calls = []

  def slow():
    calls.append("slow")
    time.sleep(0.02 if calls.count("slow") > 1 else 0.3)  # the first (warm-up) call is slow

  def fast():
    calls.append("fast")

  seconds = _harness.time_calls({"slow": slow, "fast": fast}, repeats=3)
  assert calls == ["slow", "fast"] + ["slow", "fast"] * 3
  assert 0.015 < seconds["slow"]["min"] <= seconds["slow"]["median"] < 0.2
  assert seconds["fast"]["min"] < 0.01
  with pytest.raises(ValueError, match="repeats"):
    _harness.time_calls({"fast": fast}, repeats=0)


def test_memory_estimate_counts_arguments_and_outputs():
  x = jnp.ones((256, 64), jnp.float32)  # 64 KiB in, the [256, 256] product 256 KiB out
  memory = _harness.memory_estimate(jax.jit(lambda a: a @ a.T).lower(x).compile())
  assert memory["argument_bytes"] == 256 * 64 * 4 and memory["output_bytes"] == 256 * 256 * 4
  assert memory["total_bytes"] == sum(v for k, v in memory.items() if k != "total_bytes")


def test_run_isolated_reads_the_childs_json_with_its_environment(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(
      f"import os, sys\nsys.path.insert(0, {BENCH!r})\nimport _harness\n"
      "_harness.main(None, None, lambda case: dict(case, flag=os.environ['XLA_FLAGS'], "
      "rss=_harness.peak_rss_bytes()))\n")
  record = _harness.run_isolated(str(script), {"n": 3}, env={"XLA_FLAGS": "--abc"})
  assert record["n"] == 3 and record["flag"] == "--abc" and record["rss"] > 2**20
  script.write_text("raise SystemExit('boom')\n")
  failed = _harness.run_isolated(str(script), {"n": 3})
  assert failed["status"] == "failed" and "boom" in failed["error"]


def test_import_torch_returns_modules_or_a_note():
  torch, torchvision, note = _harness.import_torch()
  assert (torch is None) == (torchvision is None) == bool(note)
  assert torch is not None or "not installed" in note


def _files(path):
  return {name for name in ("config.json", "results.json", "results.md", "summary.json")
          if (path / name).exists()}


def test_tiled_loss_tiny(tmp_path):
  from contrax.losses import infonce
  bench = load("tiled_loss")
  config = bench.get_config()
  config.log2_sizes, config.dim, config.tile_size, config.repeats = (6,), 8, 16, 1
  summary = bench.run(config, str(tmp_path))
  assert _files(tmp_path) == {"config.json", "results.json", "results.md", "summary.json"}
  records = json.loads((tmp_path / "results.json").read_text())
  assert [r["status"] for r in records] == ["ok", "ok"], records
  k1, k2 = jax.random.split(jax.random.key(0))
  z1, z2 = (jax.random.normal(k, (32, 8)) for k in (k1, k2))
  expected = float(infonce(z1, z2, temperature=0.5))
  for r in records:
    assert r["loss"] == pytest.approx(expected, rel=1e-5) and r["peak_rss_gib"] > 0
  assert summary["largest_tiled_n"] == 64


def test_sharding_tiny(tmp_path):
  bench = load("sharding")
  config = bench.get_config()
  config.batch_sizes, config.dim, config.tile_size, config.repeats = (16,), 8, 8, 1
  bench.run(config, str(tmp_path))
  records = json.loads((tmp_path / "results.json").read_text())
  assert {r["implementation"] for r in records} == {"slab", "naive", "tiled"}
  assert all(r["status"] == "ok" and r["devices"] == 8 for r in records)
  losses = [r["loss"] for r in records]
  np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
  by = {r["implementation"]: r for r in records}
  assert by["naive"]["per_device_mib"] > by["slab"]["per_device_mib"]
  assert "| 16 (32) |" in (tmp_path / "results.md").read_text()


def test_hard_negatives_tiny(tmp_path):
  bench = load("hard_negatives")
  config = bench.get_config()
  config.sizes, config.encoder_sizes, config.dim = (16,), (), 8  # the ConvNet: train_step
  config.iteration_counts, config.repeats = (3,), 1
  summary = bench.run(config, str(tmp_path))
  assert _files(tmp_path) == {"config.json", "results.json", "results.md", "summary.json"}
  results = json.loads((tmp_path / "results.json").read_text())
  (coupling,) = results["coupling"]
  # contrax's coupling against POT's Sinkhorn (float64, same eps and iterations)
  assert coupling["max_abs_diff"]["contrax_log"] < 1e-3 * coupling["max_entry"]
  assert set(summary["loss_step_ratio"][16]) == {"hcl_ot_3"}


@pytest.mark.slow  # compiles a ConvNet training step: minutes on a loaded 2-core CPU
def test_train_step_tiny(tmp_path):
  bench = load("train_step")
  config = bench.get_config()
  config.models, config.batch_sizes, config.steps = ("convnet",), (2,), 1
  config.torch, config.matmul_size = False, 16
  results = bench.run(config, str(tmp_path))
  assert _files(tmp_path) == {"config.json", "results.json", "results.md", "summary.json"}
  (row,) = results["steps"]
  assert row["model"] == "convnet" and row["contrax"]["seconds"] > 0
  assert np.isfinite(row["contrax"]["loss"]) and "torch" not in row
  assert "--config.torch=false" in (tmp_path / "results.md").read_text()


@pytest.mark.slow  # compiles one training step per registered method
def test_method_steps_tiny(tmp_path):
  """The selected methods' steps are timed against SimCLR's (ratio 1 for SimCLR itself): a
  two-view method with a momentum target and a multi-crop one (each step compiles for ~20 s
  on 2 cores, so not all of them)."""
  bench = load("method_steps")
  config = bench.get_config()
  config.model, config.data_shape, config.augmentation = "mlp", (8, 8, 1), "digits"
  config.batch_size, config.steps, config.projection_dim = 16, 1, 8
  config.methods = "simclr,byol,swav"
  results = bench.run(config, str(tmp_path))
  assert _files(tmp_path) == {"config.json", "results.json", "results.md", "summary.json"}
  assert list(results["relative"]) == ["simclr", "byol", "swav"]
  assert results["relative"]["simclr"] == 1.0
  assert all(r > 0 for r in results["relative"].values())


def _ntxent_float64(z1, z2, temperature):
  """NT-Xent (SimCLR) in float64: rows L2-normalised, each of the 2B anchors against its
  positive over the 2B − 1 others, averaged."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  s = z @ z.T / temperature
  np.fill_diagonal(s, -np.inf)
  n = len(z1)
  positive = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
  log_denominator = np.log(np.exp(s).sum(axis=1))
  return float(np.mean(log_denominator - s[np.arange(2 * n), positive]))


def test_losses_benchmark_command_line_tiny(tmp_path):
  """`--config.FIELD=VALUE` reaches the benchmark (sizes, implementations) and each case's
  child (`--case JSON`) reports the loss it timed: NT-Xent against a float64 oracle."""
  import subprocess
  bench = load("losses")
  done = subprocess.run(
      [sys.executable, os.path.join(BENCH, "losses.py"), "--config.sizes=8", "--config.dim=4",
       "--config.implementations=('contrax_1dev','contrax_8dev')", "--config.rounds=1",
       "--config.repeats=1", f"--workdir={tmp_path}"],
      env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(BENCH))),
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert _files(tmp_path) == {"config.json", "results.json", "results.md"}
  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results) == {"8"} and set(results["8"]) == {"contrax_1dev", "contrax_8dev"}
  z1, z2 = bench.inputs(dict(seed=0, batch=8, dim=4))
  expected = _ntxent_float64(z1, z2, temperature=0.5)
  for record in results["8"].values():
    assert record["loss"] == pytest.approx(expected, rel=1e-5), record


@pytest.mark.slow
def test_input_pipeline_tiny(tmp_path):
  """Four fresh processes (each imports JAX): about 2.5 minutes on the shared machine."""
  bench = load("input_pipeline")
  config = bench.get_config()
  config.num_images, config.photo_hw, config.image_size = 8, (40, 60), 16
  config.batch_size, config.batches, config.workers = 4, 1, (0,)
  config.memory_images, config.memory_hw, config.memory_batch = 8, (12, 16), 4
  summary = bench.run(config, str(tmp_path))
  assert _files(tmp_path) == {"config.json", "results.json", "results.md", "summary.json"}
  records = json.loads((tmp_path / "results.json").read_text())
  statuses = {(r["kind"], r.get("workers", r.get("factor"))): r["status"] for r in records}
  assert statuses[("contrax", 0)] == "ok" and statuses[("memory", 1)] == "ok"
  assert statuses[("memory", 10)] == "ok"
  assert summary["images_per_second"]["contrax workers=0"] > 0
  assert set(summary["peak_rss_mib_by_files"]) == {"8", "80"}
