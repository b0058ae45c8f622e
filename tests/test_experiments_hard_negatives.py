"""The HCL-OT training losses and experiments/hard_negatives.py at tiny size.

Its notebook is executed by tests/test_notebooks.py.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

from contrax import objectives, train, weights
from contrax import pairs as pairs_lib
from contrax.losses import infonce
from test_ot import oracle_cost_and_mask, oracle_sinkhorn, views

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import _study  # noqa: E402


def load_experiment():
  spec = importlib.util.spec_from_file_location(
      "hard_negatives", os.path.join(ROOT, "experiments", "hard_negatives.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def spec_infonce(z1, z2, w, t, tau_plus):
  """Weighted InfoNCE with the debiasing clamp in float64 NumPy: row i gives
  `-log(p_i / (p_i + max((M Σ_j w_ij e_ij − tau_plus M p_i) / (1 − tau_plus), M e^{-1/t})))`,
  `e_ij = exp(s_ij / t)`, `p_i = e_ii+`, M = 2B − 2 negatives."""
  z = np.concatenate([np.asarray(z1, np.float64), np.asarray(z2, np.float64)])
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = z.shape[0]
  s = z @ z.T
  _, mask = oracle_cost_and_mask(z1, z2)
  num_neg = n - 2
  pos = np.exp(s[np.arange(n), (np.arange(n) + n // 2) % n] / t)
  neg = num_neg * np.sum(np.where(mask, w * np.exp(s / t), 0.0), axis=1)
  ng = np.maximum((neg - tau_plus * num_neg * pos) / (1 - tau_plus), num_neg * np.exp(-1 / t))
  return float(np.mean(-np.log(pos / (pos + ng))))


def test_train_hcl_ot_loss_is_spec_infonce_with_sinkhorn_weights():
  config = objectives.apply_preset(train.default_config(), "hcl_ot")
  config.weighting.ot.epsilon, config.weighting.ot.num_iterations = 0.5, 300
  z1, z2 = views(21)
  got = jax.jit(objectives.make(config))(z1, z2)
  cost, mask = oracle_cost_and_mask(z1, z2)
  pi = oracle_sinkhorn(cost, mask, 0.5)
  expected = spec_infonce(z1, z2, pi / pi.sum(1, keepdims=True), config.loss.temperature,
                          config.loss.tau_plus)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_train_ot_losses_pass_no_gradient_through_the_weights():
  # Constant weights: the gradient equals that of infonce with the weights frozen.
  config = objectives.apply_preset(train.default_config(), "quadratic_ot")
  z1, z2 = views(22)
  loss = objectives.make(config)
  w = weights.quadratic_ot(pairs_lib.build(z1, z2), **config.weighting.quadratic_ot)
  frozen = lambda a, b: infonce(a, b, temperature=config.loss.temperature, weights=w,
                                tau_plus=config.loss.tau_plus)
  got = jax.jit(jax.grad(loss, argnums=(0, 1)))(z1, z2)
  expected = jax.jit(jax.grad(frozen, argnums=(0, 1)))(z1, z2)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=1e-6)


def test_bad_ot_config_is_rejected_before_compiling():
  config = objectives.apply_preset(train.default_config(), "hcl_ot")
  config.weighting.ot.epsilon = 0.0
  with pytest.raises(ValueError, match="weighting.ot: epsilon"):
    objectives.make(config)


def test_experiment_methods_map_to_train_losses():
  hn = load_experiment()
  config = hn.get_config()
  named = hn.cells(config)
  assert len(named) == 3 + len(config.ot_epsilons) + 1 and len(config.seeds) >= 3
  for method, cell in named.items():
    run = _study.train_config(_study.apply_cell(config, dict(cell, seed=7)))
    assert run.seed == 7 and run.steps == config.steps
    objectives.make(run)  # every method's loss builds with the study's hyper-parameters


def test_aggregate_pairs_each_method_with_simclr_of_the_same_seed():
  """kNN 0.5/0.6/0.7 (SimCLR) vs 0.55/0.6/0.8 (seeds 0-2): paired differences 0.05/0/0.1,
  mean 0.05, sample std 0.05; unpaired the spread would be ≈ 0.1 (the seeds' own spread)."""
  hn = load_experiment()
  records = [dict(cell=method, seed=seed, knn_accuracy=knn, linear_accuracy=1 - knn,
                  excess_similarity=0.0, weighted_similarity=0.0, uniform_similarity=0.0)
             for method, accs in (("simclr", (0.5, 0.6, 0.7)), ("hcl", (0.55, 0.6, 0.8)))
             for seed, knn in enumerate(accs)]
  records.append(dict(records[-1], seed=9))  # a seed SimCLR lacks is left out of the pairing
  stats = _study.aggregate(records, hn.METRICS, hn.REFERENCE, ("knn_accuracy",
                                                                 "linear_accuracy"))
  np.testing.assert_allclose(stats["hcl"]["knn_accuracy_minus_simclr"], (0.05, 0.05), atol=1e-12)
  np.testing.assert_allclose(stats["hcl"]["linear_accuracy_minus_simclr"], (-0.05, 0.05),
                             atol=1e-12)
  np.testing.assert_allclose(stats["simclr"]["knn_accuracy_minus_simclr"], (0.0, 0.0))
  assert "| hcl | 4 |" in _study.table(stats, hn.METRICS, hn.REFERENCE)
  assert "+0.050 ± 0.050" in _study.table(stats, hn.METRICS, hn.REFERENCE)


@pytest.mark.slow
def test_experiment_runs_at_tiny_size(tmp_path):
  hn = load_experiment()
  config = _study.apply_cell(hn.get_config(), {
      "steps": 2, "batch_size": 32, "seeds": (0,), "ot_epsilons": (0.7,),
      "diagnostic_images": 16, "weighting.ot.num_iterations": 5})
  summary = hn.run(config, str(tmp_path))
  stats = summary["stats"]
  assert set(stats) == {"simclr", "debiased", "hcl", "hcl_ot_eps0.7", "quadratic_ot"}
  for method, s in stats.items():
    # One seed (5 pretrain runs of ~30 s on 2 cores); several seeds: tests/test_study.py.
    assert s["seeds"] == 1 and 0.0 <= s["knn_accuracy"][0] <= 1.0
  assert abs(stats["simclr"]["excess_similarity"][0]) < 1e-5
  assert stats["hcl_ot_eps0.7"]["excess_similarity"][0] > 0
  assert os.path.exists(tmp_path / "accuracy_vs_hardness.png")
  assert json.load(open(tmp_path / "summary.json"))["stats"].keys() == stats.keys()
