"""The run directory (contrax.runs): one run per directory, resume only of the same run,
loading a finished run from its directory alone, and what a run reports (issue 19)."""
import json
import math
import os

import jax
import numpy as np
import pytest

from contrax import data, evaluate, runs, train


def tiny_config(**overrides):
  c = train.default_config()
  c.update(steps=4, batch_size=32, log_every=2, eval_every=0, checkpoint_every=2,
           num_devices=1, progress=False, knn_k=5, warmup_steps=2, learning_rate=1e-2)
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture
def no_final_eval(monkeypatch):
  """The final kNN / linear probe reads the parameters only; skip it to keep tests short."""
  monkeypatch.setattr(evaluate, "evaluate_all",
                      lambda *a, **k: {"knn_accuracy": -1.0, "linear_accuracy": -1.0})


def params_of_checkpoint(workdir, step):
  return jax.tree.leaves(runs.checkpoint_manager(workdir).restore(step)["params"])


def test_a_reused_run_directory_is_refused_overwritten_or_resumed(tmp_path, no_final_eval):
  """Issue 19.1: a 4-step run, then a 2-step run into the same directory. Today the second
  run trains and leaves checkpoints [2, 4], so `load_trained` serves the step-4 weights
  under the 2-step run's summary. Now it is refused, naming the directory and both ways out;
  --overwrite replaces the run (only its own checkpoint is left); a resume past `steps` or
  of another config is refused."""
  workdir = str(tmp_path / "run")
  train.pretrain(tiny_config(), workdir)
  with pytest.raises(train.ConfigError, match=rf"workdir '{workdir}' already holds a run .*"
                     r"--resume.*--overwrite"):
    train.pretrain(tiny_config(steps=2), workdir)
  with pytest.raises(train.ConfigError, match=r"checkpoint is at step 4, past steps=2"):
    train.pretrain(tiny_config(steps=2), workdir, resume=True)
  with pytest.raises(train.ConfigError, match=r"another config \(loss.temperature: 0.5 there, 0.3"):
    config = tiny_config(steps=6)
    config.loss.temperature = 0.3
    train.pretrain(config, workdir, resume=True)

  summary = train.pretrain(tiny_config(steps=2), workdir, overwrite=True)
  assert runs.checkpoint_manager(workdir).all_steps() == [2]
  assert summary["steps"] == 2 and json.load(open(f"{workdir}/config.json"))["steps"] == 2
  assert max(r["step"] for r in runs.read_metrics(workdir)) == 2
  assert not [n for n in os.listdir(tmp_path) if n != "run"]  # the old run is gone
  _, variables = train.load_trained(workdir)
  for a, b in zip(jax.tree.leaves(variables["params"]), params_of_checkpoint(workdir, 2)):
    np.testing.assert_array_equal(a, b)


def test_load_trained_from_a_relative_path(tmp_path, monkeypatch, no_final_eval):
  """Issue 19.3: orbax needs absolute paths; a finished run loads from its directory alone
  (relative or not), and with the model built from a given config too."""
  config = tiny_config(steps=2, model="convnet", widths=(4, 8))
  train.pretrain(config, str(tmp_path / "runs" / "pretrain"))
  monkeypatch.chdir(tmp_path)
  model, variables = train.load_trained("runs/pretrain")
  assert model.encoder.widths == (4, 8)
  _, same = train.load_trained("runs/pretrain", config=config)
  images = np.random.default_rng(0).random((3, 8, 8, 1), np.float32)
  h = model.apply(variables, images, train=False)[0]
  np.testing.assert_allclose(h, model.apply(same, images, train=False)[0], rtol=0, atol=0)
  assert h.shape[0] == 3 and np.all(np.isfinite(h))
  assert json.load(open("runs/pretrain/config.json"))["image_shape"] == [8, 8, 1]


def warmup_cosine(t, peak, warmup, steps):
  """Learning rate of update t (0-based): linear warm-up from 0, then cosine decay to 0."""
  if t < warmup:
    return peak * t / warmup
  return 0.5 * peak * (1 + math.cos(math.pi * (t - warmup) / (steps - warmup)))


def test_a_run_reports_learning_rate_baseline_images_and_final_accuracies(tmp_path):
  """Training records carry the schedule's learning rate; kNN is measured at step 0 (random
  init) and at the end with the linear probe; the summary counts the images used."""
  workdir = str(tmp_path)
  summary = train.pretrain(tiny_config(eval_every=2), workdir)
  records = runs.read_metrics(workdir)
  trains = [r for r in records if "loss" in r]
  assert [r["step"] for r in trains] == [2, 4]
  for r in trains:
    np.testing.assert_allclose(r["learning_rate"], warmup_cosine(r["step"] - 1, 1e-2, 2, 4),
                               rtol=1e-6)
  assert records[0] == {"step": 0, "knn_accuracy": records[0]["knn_accuracy"]}
  assert 0.0 <= records[0]["knn_accuracy"] <= 1.0
  assert records[-1] == {"step": 4, "knn_accuracy": summary["knn_accuracy"],
                         "linear_accuracy": summary["linear_accuracy"]}
  # The same numbers as TensorBoard scalars, read back by TensorBoard's own reader.
  scalars = tensorboard_scalars(f"{workdir}/tensorboard")
  for key in ("loss", "grad_norm", "learning_rate", "knn_accuracy", "linear_accuracy"):
    expected = [(r["step"], r[key]) for r in records if key in r]
    assert [(step, pytest.approx(v, rel=1e-6)) for step, v in scalars[key]] == expected, key
  dataset = data.load("digits", seed=0)
  assert (summary["num_train_images"], summary["num_test_images"]) == (
      len(dataset.train), len(dataset.test))
  assert summary["num_train_images"] + summary["num_test_images"] == 1797  # sklearn digits


def test_resume_says_where_and_counts_the_earlier_wall_time(tmp_path, capsys, monkeypatch,
                                                            no_final_eval):
  """Issue 19.11: a resumed run prints "resumed ... at step N" and its wall_seconds include
  the interrupted part's time (its last metrics record says 1000 s had passed)."""
  workdir = str(tmp_path)
  original = runs.save

  def crash_after_first_checkpoint(manager, state):
    original(manager, state)
    manager.wait_until_finished()
    raise KeyboardInterrupt

  monkeypatch.setattr(runs, "save", crash_after_first_checkpoint)
  with pytest.raises(KeyboardInterrupt):
    train.pretrain(tiny_config(), workdir)
  monkeypatch.setattr(runs, "save", original)
  records = runs.read_metrics(workdir)
  assert [r["step"] for r in records] == [2]
  records[0]["time"] = 1000.0
  with open(f"{workdir}/metrics.jsonl", "w") as f:
    f.write(json.dumps(records[0]) + "\n")
  capsys.readouterr()
  summary = train.pretrain(tiny_config(), workdir, resume=True)
  assert f"resumed {workdir} at step 2" in capsys.readouterr().out
  assert summary["wall_seconds"] > 1000.0
  assert [r["time"] > 1000.0 for r in runs.read_metrics(workdir) if "loss" in r] == [False, True]
  assert summary["images_per_second"] is None or summary["images_per_second"] > 0


def tensorboard_scalars(logdir: str) -> dict:
  """{tag: [(step, value), ...]} of the event files in `logdir`, through TensorBoard's reader."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(logdir)
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
          for tag in events.Tags()["scalars"]}


def test_metrics_log_forgets_records_past_the_restored_step(tmp_path):
  """The JSON lines past the step are dropped; TensorBoard drops its scalars past the step
  too (purge_step), so a resumed run's curves hold the rerun's values only."""
  tensorboard = str(tmp_path / "tensorboard")
  log = runs.MetricsLog(str(tmp_path / "metrics.jsonl"), enabled=True, tensorboard_dir=tensorboard)
  for step in (0, 2, 4, 6):
    log.write({"step": step, "loss": float(step)})
  log.close()
  resumed = runs.MetricsLog(str(tmp_path / "metrics.jsonl"), enabled=True,
                            tensorboard_dir=tensorboard)
  assert [r["step"] for r in resumed.forget_after(4)] == [0, 2, 4]
  assert [r["step"] for r in runs.read_metrics(str(tmp_path))] == [0, 2, 4]
  resumed.write({"step": 6, "loss": 60.0})
  resumed.close()
  assert tensorboard_scalars(tensorboard)["loss"] == [(0, 0.0), (2, 2.0), (4, 4.0), (6, 60.0)]
