"""The training loop: config validation, resume equivalence, non-finite guard, run directory."""
import json
import os

import jax
import numpy as np
import pytest

from contrax import models, objectives, runs, train
from contrax.train import TrainState


def tiny_config(**overrides):
  c = train.default_config()
  c.steps = 6
  c.batch_size = 32
  c.log_every = 2
  c.eval_every = 0
  c.checkpoint_every = 3
  c.num_devices = 1
  c.progress = False
  c.knn_k = 20
  for k, v in overrides.items():  # dotted keys reach the nested loss and weighting
    *parents, last = k.split(".")
    target = c
    for key in parents:
      target = target[key]
    target[last] = v
  return c


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def restored_state(workdir):
  manager = runs.checkpoint_manager(workdir)
  return manager.restore(manager.latest_step())


@pytest.mark.parametrize("field,value,match", [
    ("loss.name", "nope", "unknown loss.name 'nope'"),
    ("model", "vgg", "unknown model 'vgg'"),
    ("augmentation", "fancy", "fancy"),
    ("data", "imagenet", "unknown data source 'imagenet'"),
    ("loss.temperature", 0.0, "loss.temperature must be"),
    ("loss.temperature", -1.0, "loss.temperature must be"),
    ("learning_rate", 0.0, "learning_rate must be"),
    ("num_devices", 9, "num_devices must be"),
    ("batch_size", 12, "not divisible"),
    ("widths", (8, 16), "applies to the convnet and resnet18 models"),  # the default model: mlp
    ("widths", ("a",), r"widths must be positive integers, got \('a',\)"),
    ("patch_size", 4, "patch_size=4 applies to the ViT models"),  # the default model: mlp
    ("probe_learning_rate", 0.0, "probe_learning_rate must be"),
])
def test_bad_config_is_a_clear_error_before_compiling(tmp_path, field, value, match):
  config = tiny_config(**{field: value})
  if field == "batch_size":
    config.num_devices = 8
  with pytest.raises(ValueError, match=match):
    train.pretrain(config, str(tmp_path))


def test_widths_reach_the_encoder():
  """`--config.widths=8,16` sets the ConvNet's stage widths; () keeps its default; the CLI
  delivers integers, so strings are refused rather than parsed."""
  config = tiny_config(model="convnet", widths=(8, 16))
  assert train.create_model(config).encoder.widths == (8, 16)
  config.widths = ("8", "16")
  with pytest.raises(ValueError, match=r"got \('8', '16'\)"):
    train.create_model(config)
  config.widths = ()
  assert train.create_model(config).encoder.widths == (16, 32, 64, 128)
  config.widths = (0, 16)
  with pytest.raises(ValueError, match=r"got \(0, 16\)"):
    train.create_model(config)


def test_patch_size_reaches_the_vit_and_widths_do_not():
  config = tiny_config(model="vit_tiny", patch_size=2)
  assert train.create_model(config).encoder.patch_size == 2
  config.patch_size = 0  # by image size
  assert train.create_model(config).encoder.patch_size is None
  config.widths = (8, 16)
  with pytest.raises(ValueError, match="not 'vit_tiny'"):
    train.create_model(config)


@pytest.fixture
def no_final_eval(monkeypatch):
  """The final kNN / linear probe reads the parameters only; skip it to keep tests short."""
  from contrax import evaluate
  monkeypatch.setattr(evaluate, "evaluate_all", lambda *a, **k: {"knn_accuracy": -1.0})


MONITOR_KEYS = ("rankme", "rankme_projections", "projection_std")
PROBE_KEYS = ("probe_loss", "probe_accuracy")


def test_training_records_hold_the_probe_and_collapse_diagnostics(tmp_path, no_final_eval):
  """Every training record has RankMe, the projections' std and the probe's loss and accuracy
  (tests/test_monitor.py checks their values); the periodic kNN is logged at step 0 and every
  eval_every steps; the probe's state is in the checkpoint."""
  train.pretrain(tiny_config(eval_every=3), str(tmp_path))
  records = runs.read_metrics(str(tmp_path))
  training = [r for r in records if "loss" in r]
  assert [r["step"] for r in training] == [2, 4, 6]
  for record in training:
    assert all(np.isfinite(record[k]) for k in MONITOR_KEYS + PROBE_KEYS)
    assert 1.0 <= record["rankme"] <= 32 and 0 < record["projection_std"] <= 1
    assert 0 <= record["probe_accuracy"] <= 1 and record["probe_loss"] > 0
  assert [r["step"] for r in records if "knn_accuracy" in r][:2] == [0, 3]
  probe = restored_state(str(tmp_path))["probe"]
  assert probe["params"]["kernel"].shape == (512, 10) and np.any(probe["params"]["kernel"])


@pytest.mark.slow  # compiling a ViT step: about 40 s of CPU time
def test_one_pretrain_step_of_a_vit_on_digits(tmp_path, no_final_eval, monkeypatch):
  """A ViT with 4-px patches on the 8x8 digits (a 2x2 grid + CLS: 5 tokens), the online
  probe off. vit_tiny narrowed to width 48 and depth 2 for compile time on a CPU (its full
  size is checked by tests/test_models.py)."""
  monkeypatch.setitem(models.VIT_VARIANTS, "vit_tiny", (48, 2, 3))
  train.pretrain(tiny_config(model="vit_tiny", patch_size=4, steps=1, batch_size=16,
                             log_every=1, checkpoint_every=1, online_probe=False),
                 str(tmp_path))
  (record,) = [r for r in runs.read_metrics(str(tmp_path)) if "loss" in r]
  assert all(np.isfinite(record[k]) for k in ("loss", "grad_norm", *MONITOR_KEYS))
  assert not any(k in record for k in PROBE_KEYS)
  state = restored_state(str(tmp_path))
  assert state["params"]["encoder"]["patch_kernel"].shape == (4, 4, 1, 48)
  assert not jax.tree.leaves(state["probe"])


def test_batch_larger_than_dataset(tmp_path):
  with pytest.raises(ValueError, match="batch_size 4096 is larger than the 1347"):
    train.pretrain(tiny_config(batch_size=4096), str(tmp_path))


def test_unwritable_workdir(tmp_path):
  target = tmp_path / "file"
  target.write_text("x")
  with pytest.raises(ValueError, match="not writable"):
    train.pretrain(tiny_config(), str(target / "run"))


def test_resume_equals_uninterrupted_run(tmp_path):
  full = str(tmp_path / "full")
  train.pretrain(tiny_config(), full)
  cut = str(tmp_path / "cut")
  config = tiny_config()
  train_steps_then_stop(config, cut, stop_after=3)
  train.pretrain(config, cut, resume=True)
  a, b = restored_state(full), restored_state(cut)
  assert int(a["step"]) == int(b["step"]) == 6
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)


def train_steps_then_stop(config, workdir, stop_after):
  """Run the loop but stop (like a crash) right after the checkpoint at `stop_after`."""
  original = runs.save
  calls = []

  def save_then_crash(manager, state):
    original(manager, state)
    calls.append(int(state.step))
    if int(state.step) >= stop_after:
      manager.wait_until_finished()
      raise KeyboardInterrupt

  runs.save = save_then_crash
  try:
    with pytest.raises(KeyboardInterrupt):
      train.pretrain(config, workdir)
  finally:
    runs.save = original
  assert calls == [stop_after]


def test_run_directory_contents(tmp_path):
  summary = train.pretrain(tiny_config(eval_every=4), str(tmp_path))
  for name in ("config.json", "metrics.jsonl", "summary.json", "loss.png", "accuracy.png"):
    assert os.path.exists(tmp_path / name), name
  saved = json.loads((tmp_path / "summary.json").read_text())
  for key in ("knn_accuracy", "linear_accuracy", "nearest_centre_accuracy", "wall_seconds"):
    assert key in saved and key in summary
  steps = [r["step"] for r in runs.read_metrics(str(tmp_path)) if "loss" in r]
  assert steps == [2, 4, 6]


def poison_ntxent(monkeypatch):
  """Make the objective return NaN (its input is multiplied by NaN)."""
  original = objectives.make

  def poisoned(config):
    loss = original(config)
    return lambda z1, z2, *, axis_name=None: loss(z1 * jax.numpy.nan, z2, axis_name=axis_name)

  monkeypatch.setattr(objectives, "make", poisoned)


def test_nonfinite_step_stops_with_step_and_checkpoint(tmp_path, monkeypatch):
  poison_ntxent(monkeypatch)
  with pytest.raises(FloatingPointError, match="step 0.*last good checkpoint: none"):
    train.pretrain(tiny_config(), str(tmp_path))
  manager = runs.checkpoint_manager(str(tmp_path))
  assert manager.latest_step() is None  # nothing non-finite was written


def test_nonfinite_skip_policy_keeps_parameters_finite(tmp_path, monkeypatch):
  poison_ntxent(monkeypatch)
  train.pretrain(tiny_config(on_nonfinite="skip"), str(tmp_path))
  state = restored_state(str(tmp_path))
  assert all(np.all(np.isfinite(x)) for x in leaves(state))


def test_pretrain_once_trains_once_and_refuses_a_stale_run(tmp_path, monkeypatch):
  config = tiny_config()
  first = train.pretrain_once(config, str(tmp_path))
  assert set(first) >= {"knn_accuracy", "linear_accuracy", "wall_seconds"}

  def no_training(*args, **kwargs):
    raise AssertionError("pretrain_once retrained a finished run")

  monkeypatch.setattr(train, "pretrain", no_training)
  assert train.pretrain_once(tiny_config(), str(tmp_path)) == first
  with pytest.raises(ValueError, match=r"another config \(loss.temperature: 0\.5 there, 0\.3 "
                                       r"here, steps: 6 there, 7 here"):
    train.pretrain_once(tiny_config(steps=7, **{"loss.temperature": 0.3}), str(tmp_path))
