"""experiments/curl_convergence.py at a tiny size: run directory, tables, GD against optax."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from contrax import models, theory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))  # the script imports experiments/_study


@pytest.fixture(scope="module")
def experiment():
  spec = importlib.util.spec_from_file_location(
      "curl_convergence", os.path.join(ROOT, "experiments", "curl_convergence.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tiny_run_writes_the_run_directory(experiment, tmp_path):
  config = experiment.tiny_config()
  summary = experiment.run(config, str(tmp_path))
  for name in ("config.json", "metrics.jsonl", "summary.json", "summary.md",
               "widths_training_L2.png", "widths_lazy.png", "widths_lambda_min.png",
               "negatives_synthetic.png", "negatives_digits.png"):
    assert (tmp_path / name).exists(), name
  saved = json.loads((tmp_path / "summary.json").read_text())
  runs = saved["widths"]["runs"]
  assert [(r["depth"], r["width"]) for r in runs] == [(2, 16), (2, 64)]
  for r in runs:
    assert np.isfinite(r["movement"]) and r["movement"] > 0
    assert np.isfinite(r["kernel_drift"]) and r["lambda_min_0"] >= -1e-4
  rows = saved["negatives"]["rows"]
  assert len(rows) == 2 * len(config.negatives.negatives) * 2
  assert all(r["lhs"] <= r["rhs"] + 1e-5 * max(1, abs(r["rhs"])) for r in rows)
  assert saved["negatives"]["checks"]["bound_holds_in_every_row"]
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2 * (config.widths.steps + 1) + len(rows)
  assert "| L | m |" in (tmp_path / "summary.md").read_text()
  assert summary["seconds"] > 0


def test_gradient_descent_matches_optax_sgd(experiment):
  rng = np.random.default_rng(0)
  x, labels = theory.latent_class_points(rng, 3, 4, 5)
  tuples = theory.sample_tuples(rng, labels, 6, 2, collision_free=True)
  model = models.NTKMLP(width=8, depth=2, out_dim=3)
  params = model.init(jax.random.key(0), x)["params"]
  objective = experiment.curl_objective(lambda p, xx: model.apply({"params": p}, xx), tuples)
  final, loss, error, norm = experiment.gradient_descent(
      objective, params, jnp.asarray(x), learning_rate=0.5, steps=5, chunk=2)
  assert loss.shape == error.shape == norm.shape == (6,)
  opt = optax.sgd(0.5)

  @jax.jit
  def sgd_step(p, state):
    value, grads = jax.value_and_grad(lambda q: objective(q, x)[0])(p)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, value

  state, p, losses = opt.init(params), params, []
  for _ in range(5):
    p, state, value = sgd_step(p, state)
    losses.append(float(value))
  losses.append(float(jax.jit(objective)(p, x)[0]))
  np.testing.assert_allclose(loss, losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(p)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_loglog_slope_and_config_checks(experiment):
  widths = np.array([64, 256, 1024, 4096])
  assert np.isclose(experiment.loglog_slope(widths, 3.0 * widths ** -0.5), -0.5)
  config = experiment.get_config()
  config.widths.parameterisation = "standard"
  with pytest.raises(ValueError, match="widths.parameterisation 'standard'; valid choices"):
    experiment.check_config(config)
  for field, value, match in (("chunk", 0, "chunk must be an integer >= 1, got 0"),
                              ("widths.widths", (64, 2.5), r"widths.widths .* got 2.5"),
                              ("negatives.steps", True, "negatives.steps must be an integer"),
                              ("negatives.datasets", ("cifar",), "negatives.datasets 'cifar'"),
                              ("widths.learning_rate", 0.0, "widths.learning_rate must be")):
    config = experiment.get_config()
    *parents, leaf = field.split(".")
    node = config if not parents else config[parents[0]]
    with node.ignore_type():
      node[leaf] = value
    with pytest.raises(ValueError, match=match):
      experiment.check_config(config)
  experiment.check_config(experiment.get_config())


def test_command_line_flags_reach_the_config(tmp_path):
  """`--config.FIELD=VALUE` overrides reach `run`: a bad one is refused naming the field."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "curl_convergence.py"),
       "--config.widths.parameterisation=standard",
       f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode != 0
  assert "unknown widths.parameterisation 'standard'" in done.stderr, done.stderr[-2000:]
  assert not (tmp_path / "run").exists()  # refused before anything was written
