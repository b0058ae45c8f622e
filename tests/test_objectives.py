"""Objectives from a nested config (contrax.objectives): fields, presets, validation, the
official HCL gradient (float64 oracle), and one gather / one similarity matmul per step (HLO)."""
from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from contrax import objectives, weights
from contrax.losses import tiled
from oracles import fd_grad, rel_err


def config_of(preset, **fields):
  c = objectives.apply_preset(objectives.default_config(), preset)
  for dotted, value in fields.items():
    *parents, last = dotted.split(".")
    target = c
    for key in parents:
      target = target[key]
    target[last] = value
  return c


def test_every_weighting_keyword_is_a_config_field_with_its_default():
  c = objectives.default_config()
  for name, fn in weights.REGISTRY.items():
    for key, p in inspect.signature(fn).parameters.items():
      if p.kind is not inspect.Parameter.KEYWORD_ONLY:
        continue
      if key == "temperature":  # shared with the loss
        assert key not in c.weighting.get(name, {})
        continue
      assert c.weighting[name][key] == p.default, (name, key)
  for key in ("marginals", "gradient", "cost", "kappa", "tau", "epsilon", "num_iterations"):
    assert key in c.weighting.ot


def test_ot_options_from_the_config_reach_the_weighting(monkeypatch):
  seen = {}

  def spy(pairs, **kwargs):
    seen.update(kwargs)
    return weights.uniform(pairs)

  monkeypatch.setitem(weights.REGISTRY, "ot", spy)
  monkeypatch.setattr(objectives, "hyperparameters", lambda name: {
      "epsilon": 0.7, "marginals": "balanced", "gradient": "stop", "cost": "sqeuclidean",
      "num_iterations": 10})
  c = config_of("hcl_ot", **{"weighting.ot.epsilon": 0.3, "weighting.ot.marginals": "unbalanced",
                             "weighting.ot.gradient": "unroll", "weighting.ot.cost": "exp",
                             "weighting.ot.num_iterations": 7})
  z = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  objectives.make(c)(z, z + 1)
  assert seen == {"epsilon": 0.3, "marginals": "unbalanced", "gradient": "unroll",
                  "cost": "exp", "num_iterations": 7}


@pytest.mark.parametrize("flags,error", [
    (["--config.weighting.name=ot", "--config.weighting.ot.epsilon=0.0"],
     "weighting.ot: epsilon must be a finite number > 0, got 0.0"),
    (["--config.weighting.name=ot", "--config.weighting.ot.marginals=partial"],
     "weighting.ot: .*marginals.*'partial'"),
    (["--config.loss.tau_plus=1.0"], "loss.tau_plus"),
])
def test_every_knob_is_a_command_line_flag(flags, error, tmp_path):
  """The main job's `--config.<field>=VALUE` reaches the objective's validation (exit 2)."""
  import os
  import re
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
      [sys.executable, os.path.join(root, "experiments", "pretrain.py"), *flags,
       f"--workdir={tmp_path / 'run'}"], cwd=root, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu"))
  assert done.returncode == 2 and re.search(error, done.stderr), done.stderr[-2000:]


def test_presets_and_describe():
  assert set(objectives.PRESETS) == {
      "ntxent", "debiased", "decoupled", "hcl", "hcl_detached", "hcl_ot", "quadratic_ot",
      "alpha_direct", "alpha_inverse_power", "alpha_sparsemax", "alpha_entropy", "barlow",
      "vicreg"}
  assert objectives.describe(config_of("ntxent")) == "infonce"
  assert objectives.describe(config_of("hcl")) == "infonce+hcl"
  assert objectives.describe(config_of("hcl_detached")) == "infonce+hcl(detached)"
  assert objectives.describe(config_of("barlow")) == "barlow_twins"
  c = config_of("hcl", **{"loss.temperature": 0.2})
  back = objectives.apply_preset(c, "ntxent")  # the objective fields reset, temperature kept
  assert back.weighting.name == "uniform" and back.loss.tau_plus == 0.0
  assert back.loss.temperature == 0.2 and c.weighting.name == "hcl"


@pytest.mark.parametrize("fields,match", [
    ({"loss.name": "simclr"}, "loss.name"),
    ({"loss.temperature": 0.0}, "loss.temperature"),
    ({"loss.tau_plus": 1.0}, "loss.tau_plus"),
    ({"weighting.name": "focal"}, "weighting.name"),
    ({"weighting.name": "hcl", "weighting.hcl.beta": -1.0}, "weighting.hcl: beta"),
    ({"weighting.name": "ot", "weighting.ot.marginals": "partial"}, "weighting.ot: .*marginals"),
    ({"weighting.name": "ot", "weighting.ot.epsilon": 0.0}, "weighting.ot: epsilon"),
    ({"loss.name": "barlow_twins", "weighting.name": "hcl"}, "weighting.name"),
    ({"loss.name": "barlow_twins", "loss.lambda_": -1.0}, "loss.lambda_"),
])
def test_bad_fields_are_errors_naming_the_field(fields, match):
  with pytest.raises(ValueError, match=match):
    objectives.make(config_of("ntxent", **fields))


# ----------------------------------------------------------------------------- HCL gradient


def official_hcl(z1, z2, t=0.5, beta=1.0, tau_plus=0.1):
  """float64 transliteration of the official HCL loss (Robinson et al. 2021, joshr17/HCL)."""
  out_1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
  out_2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
  out = np.concatenate([out_1, out_2])
  b = z1.shape[0]
  neg = np.exp(out @ out.T / t)
  mask = np.ones((2 * b, 2 * b), bool)
  for i in range(b):
    mask[i, i] = mask[i, i + b] = mask[i + b, i] = mask[i + b, i + b] = False
  neg = neg[mask].reshape(2 * b, -1)
  pos = np.exp(np.sum(out_1 * out_2, axis=-1) / t)
  pos = np.concatenate([pos, pos])
  n = 2 * b - 2
  imp = np.exp(beta * np.log(neg))
  reweight_neg = (imp * neg).sum(axis=-1) / imp.mean(axis=-1)
  ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
  ng = np.maximum(ng, n * np.e ** (-1 / t))
  return np.mean(-np.log(pos / (pos + ng)))


def test_hcl_gradient_is_the_official_one_dense_and_tiled():
  """B = 64, D = 16, t = 0.5, β = 1, τ⁺ = 0.1: the "hcl" objective and the tiled loss have the
  official gradient; the detached variant (the trainer's former default) is ~5 % off."""
  rng = np.random.default_rng(0)
  z1, z2 = (rng.normal(size=(64, 16)) for _ in range(2))
  want_value = official_hcl(z1, z2)
  want = fd_grad(official_hcl, z1, z2, h=1e-6)
  a, b = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
  dense = objectives.make(config_of("hcl"))
  tiled_loss = lambda x, y: tiled.tiled_infonce(x, y, temperature=0.5, tau_plus=0.1, beta=1.0,
                                                tile_size=48)
  for loss in (dense, tiled_loss):
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(a, b)
    np.testing.assert_allclose(float(value), want_value, rtol=1e-5)
    assert rel_err(grads, want) < 1e-4
  detached = objectives.make(config_of("hcl_detached"))
  assert rel_err(jax.grad(detached, argnums=(0, 1))(a, b), want) > 1e-2


# ----------------------------------------------------------------------------- HLO


def collective_and_dot_counts(preset):
  """(all-gathers, non-scalar all-reduces) in the forward program and (all-gathers, [2b, 2B]
  dots) in the lowered value-and-grad program of `preset` on 8 devices."""
  n_dev = 8
  mesh = Mesh(np.array(jax.devices()[:n_dev]), ("data",))
  b, dim = 2, 8
  loss = objectives.make(config_of(preset))
  fn = lambda z1, z2: loss(z1, z2, axis_name="data")
  spec = P("data")
  z = jax.device_put(jnp.ones((n_dev * b, dim), jnp.float32), NamedSharding(mesh, spec))
  forward = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec), out_specs=P()))
  both = jax.jit(jax.shard_map(jax.value_and_grad(fn, argnums=(0, 1)), mesh=mesh,
                               in_specs=(spec, spec), out_specs=(P(), (spec, spec))))
  hlo = forward.lower(z, z).compile().as_text()
  gathers = len(re.findall(r" all-gather(-start)?\(", hlo))
  reductions = re.findall(r"= (\S+|\([^)]*\)) all-reduce(?:-start)?\(", hlo)
  wide = [r for r in reductions if re.search(r"\[\d", r)]
  text = both.lower(z, z).as_text()
  lowered_gathers = len(re.findall(r"stablehlo\.all_gather", text))
  slab = f"tensor<{2 * b}x{2 * b * n_dev}xf32>"
  dots = len(re.findall(r"stablehlo\.dot_general[^\n]*-> " + re.escape(slab), text))
  return gathers, wide, lowered_gathers, dots


@pytest.mark.parametrize("preset", ["hcl", "hcl_ot", "alpha_direct"])
def test_one_gather_and_one_similarity_matmul_per_step(preset):
  gathers, wide_reductions, lowered_gathers, dots = collective_and_dot_counts(preset)
  assert gathers == 1 and lowered_gathers == 1
  assert wide_reductions == []  # no psum used as a gather
  assert dots == 1


def test_ntxent_step_gathers_the_embeddings_once_and_sends_the_columns_no_gradient():
  """The uniform NT-Xent step (`contrax.losses._slab_ntxent.ntxent_mean`): one all-gather of
  the `[2b, D]` embeddings, the `[2b, 2B]` similarity matmul twice (the backward sweep
  recomputes it instead of storing the slab), and in the value-and-grad program no
  all-reduce of a `[2B, D]` column gradient (the columns' share of each row's gradient comes
  from the row's own slab and two gathered numbers per row)."""
  gathers, wide_reductions, lowered_gathers, dots = collective_and_dot_counts("ntxent")
  assert dots == 2 and wide_reductions == []
  n_dev, b, dim = 8, 2, 8
  mesh = Mesh(np.array(jax.devices()[:n_dev]), ("data",))
  loss = objectives.make(config_of("ntxent"))
  spec = P("data")
  both = jax.jit(jax.shard_map(
      jax.value_and_grad(lambda z1, z2: loss(z1, z2, axis_name="data"), argnums=(0, 1)),
      mesh=mesh, in_specs=(spec, spec), out_specs=(P(), (spec, spec))))
  z = jax.device_put(jnp.ones((n_dev * b, dim), jnp.float32), NamedSharding(mesh, spec))
  hlo = both.lower(z, z).compile().as_text()
  gathered = re.findall(r"= (\S+) all-gather(?:-start)?\(", hlo)
  assert len([g for g in gathered if re.search(rf",{dim}\]", g)]) == 1, gathered
  reduced = re.findall(r"= (\S+|\([^)]*\)) all-reduce(?:-start)?\(", hlo)
  shapes = [shape for r in reduced for shape in re.findall(r"\w+\[[^\]]*\]", r)]
  assert shapes and all(shape.endswith("[]") for shape in shapes), reduced  # scalars only
