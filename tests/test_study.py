"""experiments/_study.py on a toy per-run function (no training): statistics against NumPy,
pairing by seed, the table, resume, the one-seed case, and `apply_cell`."""
from __future__ import annotations

import json
import os
import sys

import ml_collections
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import _study as study  # noqa: E402

# accuracy(cell, seed): the seed moves every cell alike (+0.1 per seed), the cell by its offset
OFFSET = {"base": 0.0, "better": 0.02, "noisy": 0.05}
NOISE = {0: 0.0, 1: 0.01, 2: -0.005}


def toy_config(seeds=(0, 1, 2)):
  c = ml_collections.ConfigDict()
  c.data = "toy"
  c.seeds = seeds
  c.seed = 0
  c.offset = 0.0
  c.scale = 1.0
  return c


CELLS = {name: {"offset": off} for name, off in OFFSET.items()}


def toy_run(calls):
  def run_one(run, run_dir, dataset):
    calls.append((run.offset, run.seed))
    assert dataset == ("dataset", run.seed)
    noise = NOISE[run.seed] if run.offset == OFFSET["noisy"] else 0.0
    return {"acc": 0.5 + 0.1 * run.seed + run.offset + noise, "loss": run.scale * run.seed}
  return run_one


def run_toy(workdir, calls, loads=None, seeds=(0, 1, 2), **kwargs):
  loads = [] if loads is None else loads

  def load(run):
    loads.append(run.seed)
    return ("dataset", run.seed)

  return study.run(toy_config(seeds), str(workdir), cells=CELLS, run_one=toy_run(calls),
                   metrics={"acc": "accuracy", "loss": "loss"}, reference="base",
                   paired_metrics=("acc",), load=load,
                   **kwargs)


def test_stats_are_numpy_mean_and_sample_std_and_paired_by_seed(tmp_path):
  calls, loads = [], []
  summary = run_toy(tmp_path, calls, loads)
  stats = summary["stats"]
  for name, off in OFFSET.items():
    acc = np.array([0.5 + 0.1 * s + off + (NOISE[s] if name == "noisy" else 0.0)
                    for s in (0, 1, 2)])
    np.testing.assert_allclose(stats[name]["acc"], [acc.mean(), acc.std(ddof=1)], atol=1e-12)
    assert stats[name]["seeds"] == 3
  # Paired: the shared seed effect cancels; the unpaired std (0.1) would hide the offsets.
  np.testing.assert_allclose(stats["better"]["acc_minus_base"], [0.02, 0.0], atol=1e-12)
  diff = 0.05 + np.array([NOISE[s] for s in (0, 1, 2)])
  np.testing.assert_allclose(stats["noisy"]["acc_minus_base"], [diff.mean(), diff.std(ddof=1)],
                             atol=1e-12)
  assert stats["base"]["acc_minus_base"] == [0.0, 0.0]
  assert sorted(loads) == [0, 1, 2]  # one dataset per seed, shared by the three cells
  assert len(calls) == 9 and summary["runs"] == 9


def test_files_and_table(tmp_path):
  run_toy(tmp_path, [], title="toy study")
  text = (tmp_path / "results.md").read_text()
  assert text.startswith("toy study")
  assert "| cell | seeds | accuracy | loss | accuracy − base (paired by seed) |" in text
  assert "| better | 3 | 0.620 ± 0.100 | 1.000 ± 1.000 | +0.020 ± 0.000 |" in text
  assert "| base | 3 | 0.600 ± 0.100 | 1.000 ± 1.000 | +0.000 ± 0.000 |" in text
  assert "sample std (ddof = 1)" in text
  records = json.loads((tmp_path / "results.json").read_text())
  assert {(r["cell"], r["seed"]) for r in records} == {(c, s) for c in CELLS for s in (0, 1, 2)}
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["runs"] == 9 and "ddof = 1" in summary["std"]
  assert json.loads((tmp_path / "config.json").read_text())["seeds"] == [0, 1, 2]


def test_tensorboard_has_one_hparams_session_per_run_with_its_metrics(tmp_path):
  """Read back through TensorBoard's own reader: each run's directory holds its metrics;
  a resumed study rewrites the sessions rather than doubling them."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  run_toy(tmp_path, [], seeds=(0, 1))
  run_toy(tmp_path, [], seeds=(0, 1))
  sessions = sorted(os.listdir(tmp_path / "tensorboard"))
  sessions = [s for s in sessions if os.path.isdir(tmp_path / "tensorboard" / s)]
  assert sessions == sorted(f"{c}_seed{s}" for c in CELLS for s in (0, 1))
  events = EventAccumulator(str(tmp_path / "tensorboard" / "noisy_seed1"))
  events.Reload()
  (acc,) = events.Scalars("study/acc")
  assert acc.value == pytest.approx(0.5 + 0.1 + OFFSET["noisy"] + NOISE[1])
  assert [e.value for e in events.Scalars("study/loss")] == [pytest.approx(1.0)]


def test_finished_runs_are_reused_not_rerun(tmp_path):
  calls = []
  first = run_toy(tmp_path, calls, seeds=(0, 1))
  assert len(calls) == 6
  calls.clear()
  again = run_toy(tmp_path, calls, seeds=(0, 1, 2))  # only seed 2 is new
  assert sorted(calls) == sorted((off, 2) for off in OFFSET.values())
  assert again["stats"]["better"]["seeds"] == 3
  assert first["stats"]["base"]["acc"][0] == pytest.approx(0.55)
  # a finished run of another cell in the same directory is refused, never reused
  cells = dict(CELLS, better={"offset": 0.03})
  with pytest.raises(ValueError, match="another cell"):
    study.run(toy_config((0,)), str(tmp_path), cells=cells, run_one=toy_run([]),
              metrics={"acc": "accuracy"}, load=lambda run: ("dataset", run.seed))


def test_one_seed_has_no_std(tmp_path):
  with pytest.raises(ValueError, match="n = 1"):
    study.mean_std([0.5])
  summary = run_toy(tmp_path, [], seeds=(0,))
  text = (tmp_path / "results.md").read_text()
  assert "± 0.000" not in text and "0.600 (n = 1, no std)" not in text
  assert "0.500 (n = 1, no std)" in text and "+0.020 (n = 1, no std)" in text
  assert summary["stats"]["base"]["acc"] == [0.5, None]


def test_bad_study_input_is_refused(tmp_path):
  with pytest.raises(ValueError, match="reference"):
    study.run(toy_config(), str(tmp_path), cells=CELLS, run_one=toy_run([]),
              metrics={"acc": "a"}, reference="nope", load=lambda run: None)
  with pytest.raises(ValueError, match="seeds"):
    study.run(toy_config(seeds=(0, 0)), str(tmp_path), cells=CELLS, run_one=toy_run([]),
              metrics={"acc": "a"}, load=lambda run: None)
  with pytest.raises(ValueError, match="'nope'"):
    study.run(toy_config(), str(tmp_path), cells={"x": {"nope": 1}}, run_one=toy_run([]),
              metrics={"acc": "a"}, load=lambda run: None)


def test_plot_hook_gets_stats_and_records(tmp_path):
  seen = {}

  def plot(stats, records, workdir):
    seen.update(cells=set(stats), runs=len(records), workdir=workdir)

  run_toy(tmp_path, [], plot=plot)
  assert seen == {"cells": set(CELLS), "runs": 9, "workdir": str(tmp_path)}


def test_apply_cell_presets_and_dotted_overrides_reach_the_training_config():
  from contrax import objectives, train
  base = train.default_config()
  c = study.apply_cell(base, {"preset": "hcl_ot", "weighting.ot.epsilon": 0.3,
                              "loss.tau_plus": 0.05, "augmentation": "crop"})
  objectives.make(c)  # builds: every key is a real training field
  assert (c.weighting.name, c.weighting.stop_gradient, c.weighting.ot.epsilon, c.loss.tau_plus,
          c.augmentation) == ("ot", True, 0.3, 0.05, "crop")
  # the study config is not changed
  assert base.weighting.name == "uniform" and base.weighting.ot.epsilon == 0.7
  c = study.apply_cell(base, {"preset": "alpha_direct", "weighting.alpha_direct.p": 2.0})
  assert (c.loss.name, c.weighting.name, c.weighting.alpha_direct.p) == (
      "alpha_cl", "alpha_direct", 2.0)
