"""experiments/methods.py at tiny size: methods train through the main job's code path
(`train.pretrain`) and land in the study's table against SimCLR.

The end-to-end run takes the methods no other slow test trains through `train.pretrain`
(SimSiam, SwAV, DINO, VICReg; BYOL and MoCo v3 run the CLI in test_methods_predictive, MoCo v2
and NNCLR `pretrain` in test_methods_queue, Barlow Twins the generalisation study in
test_theory_generalization): each costs a compile of ~30 s on 2 cores."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest

from contrax import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))


def load_experiment():
  spec = importlib.util.spec_from_file_location(
      "methods_study", os.path.join(ROOT, "experiments", "methods.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_cells_are_every_method_plus_barlow_and_refuse_unknown_names():
  study = load_experiment()
  config = study.get_config()
  cells = study.cells(config)
  assert list(cells) == [*methods.NAMES, "barlow_twins", "vicreg"]
  assert cells["dino"]["method.dino.out_dim"] == 1024  # CPU sizes unless paper_sizes
  config.paper_sizes = True
  assert study.cells(config)["dino"] == {"method.name": "dino"}
  config.methods = "barlow_twins"
  assert list(study.cells(config)) == ["simclr", "barlow_twins"]  # the reference is always run
  config.methods = "simclr,nope"
  with pytest.raises(ValueError, match=r"\['nope'\] are not methods; valid choices: simclr"):
    study.cells(config)


@pytest.mark.slow
def test_methods_train_and_are_compared_with_simclr(tmp_path):
  study = load_experiment()
  config = study.get_config()
  config.steps, config.batch_size, config.log_every, config.knn_k = 4, 32, 2, 10
  config.seeds = (0,)
  config.methods = "simsiam,swav,dino,vicreg"
  summary = study.run(config, str(tmp_path))
  names = ["simclr", "simsiam", "swav", "dino", "vicreg"]
  assert list(summary["stats"]) == names
  for name in names:
    stats = summary["stats"][name]
    for key in ("knn_accuracy", "linear_accuracy"):
      assert 0.0 <= stats[key][0] <= 1.0 and stats[key][1] is None  # n = 1: no std
      assert math.isfinite(stats[f"{key}_minus_simclr"][0])
  assert os.path.exists(tmp_path / "accuracy.png")
  with open(tmp_path / "results.json") as f:
    assert sorted({r["cell"] for r in json.load(f)}) == sorted(names)
