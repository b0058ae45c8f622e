"""Faults a training run meets, each provoked: crashes, torn checkpoints, NaNs, bad data, bad input.

1. Crash and resume: a CLI training subprocess SIGKILLed at a (seeded) random step and resumed
   with `--resume` ends with parameters and optimiser state equal to an uninterrupted run's,
   and its per-step losses after the resume point are the uninterrupted run's (same batches).
2. Atomic checkpoints: SIGKILL while orbax writes a checkpoint leaves the previous one loadable
   and `--resume` picks the newest complete one; leftover temporary directories are ignored.
3. Non-finite values: a NaN gradient under a finite loss, or an overflowing update, stops the
   run naming the step and the last good (committed) checkpoint, or is skipped; no checkpoint
   ever holds non-finite values.
4. Bad data through `pretrain`: an image folder with corrupt files trains with
   `on_bad_file='skip'` and is refused before compiling with `'raise'`.
5. Bad configuration: a clear error listing the choices, before any compilation (no JAX
   tracing at all), and a one-line `error: ...` with exit status 2 from the CLI.

The subprocess tests (1, 2) are marked slow; the others run in-process with a stubbed final
evaluation (it reads but never changes the parameters).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from contrax import evaluate, models, runs, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULT_RUN = os.path.join(ROOT, "tests", "_fault_run.py")
CLI = os.path.join(ROOT, "experiments", "pretrain.py")
STEPS, EVERY = 12, 4
CLI_FLAGS = [f"--config.{k}={v}" for k, v in dict(
    steps=STEPS, checkpoint_every=EVERY, batch_size=32, log_every=1, eval_every=0,
    num_devices=1, progress="false", knn_k=20, seed=3).items()]


# ----------------------------------------------------------------------------- helpers


def subprocess_env(**extra) -> dict:
  """The test's environment for a child: one CPU device (not the 8 virtual ones of conftest)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **extra)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def run_cli(args, *, script=CLI, timeout=600, **env) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=subprocess_env(**env),
                        capture_output=True, text=True, timeout=timeout)


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def restore(workdir: str, step: int | None = None) -> dict:
  manager = runs.checkpoint_manager(workdir)
  step = manager.latest_step() if step is None else step
  return manager.restore(step)


def assert_states_equal(a: dict, b: dict, atol: float = 1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def all_finite(state: dict) -> bool:
  return all(np.all(np.isfinite(x)) for x in leaves(state) if np.issubdtype(x.dtype, np.floating))


def losses(workdir: str) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in runs.read_metrics(workdir) if "loss" in r}


def tiny_config(**overrides):
  c = train.default_config()
  c.update(steps=6, batch_size=32, log_every=1, eval_every=0, checkpoint_every=3,
           num_devices=1, progress=False, knn_k=20)
  for k, v in overrides.items():  # dotted names reach the nested objective fields
    *parents, leaf = k.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.fixture
def no_final_eval(monkeypatch):
  """The final kNN / linear probe reads the parameters only; skip it to keep tests short."""
  monkeypatch.setattr(evaluate, "evaluate_all", lambda *a, **k: {"knn_accuracy": -1.0})


# ----------------------------------------------------------------------------- 1. crash, resume


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  done = run_cli([*CLI_FLAGS, "--workdir", workdir], script=FAULT_RUN,
                 CONTRAX_SKIP_FINAL_EVAL="1")
  assert done.returncode == 0, done.stderr
  return workdir


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_equals_uninterrupted_run(uninterrupted_run,
                                                                     tmp_path):
  kill_step = int(np.random.default_rng(7).integers(EVERY + 1, STEPS))  # seeded: reproducible
  workdir = str(tmp_path)
  killed = run_cli([*CLI_FLAGS, "--workdir", workdir], script=FAULT_RUN,
                   CONTRAX_SKIP_FINAL_EVAL="1", CONTRAX_KILL_AFTER_STEP=str(kill_step))
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert max(losses(workdir)) == kill_step and not os.path.exists(f"{workdir}/summary.json")
  resume_step = runs.checkpoint_manager(workdir).latest_step()
  assert resume_step is not None and 0 < resume_step <= kill_step

  resumed = run_cli([*CLI_FLAGS, "--workdir", workdir, "--resume"], script=FAULT_RUN,
                    CONTRAX_SKIP_FINAL_EVAL="1")
  assert resumed.returncode == 0, resumed.stderr
  a, b = restore(uninterrupted_run), restore(workdir)
  assert int(a["step"]) == int(b["step"]) == STEPS
  assert_states_equal(a["params"], b["params"])
  assert_states_equal(a["opt_state"], b["opt_state"])
  assert_states_equal(a["batch_stats"], b["batch_stats"])
  # The data order continues where it stopped: every step after the resume point saw the
  # uninterrupted run's batch (and augmentation), so its loss is the same number.
  reference, got = losses(uninterrupted_run), losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))  # records past the checkpoint were redone
  np.testing.assert_allclose([got[s] for s in range(1, STEPS + 1)],
                             [reference[s] for s in range(1, STEPS + 1)], rtol=1e-6)


# ----------------------------------------------------------------------------- 2. atomic writes


def orbax_tmp_dirs(checkpoint_dir: str) -> list[str]:
  return [n for n in os.listdir(checkpoint_dir) if ".orbax-checkpoint-tmp" in n]


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(uninterrupted_run, tmp_path):
  workdir, hang_step = str(tmp_path), 2 * EVERY
  checkpoints = os.path.join(workdir, "checkpoints")
  process = subprocess.Popen(
      [sys.executable, FAULT_RUN, *CLI_FLAGS, "--workdir", workdir], cwd=ROOT,
      env=subprocess_env(CONTRAX_SKIP_FINAL_EVAL="1", CONTRAX_HANG_IN_SAVE_AT=str(hang_step)),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 500
    while time.time() < deadline and process.poll() is None:
      if os.path.isdir(checkpoints) and any(n.startswith(f"{hang_step}.")
                                            for n in orbax_tmp_dirs(checkpoints)):
        break
      time.sleep(0.005)
    assert process.poll() is None, "the run ended before its checkpoint write was caught"
    os.kill(process.pid, signal.SIGKILL)  # mid-write: orbax still fills its temporary dir
  finally:
    process.kill()
    process.wait()
  assert not os.path.exists(os.path.join(checkpoints, str(hang_step))), \
      "the write committed before the kill; enlarge _fault_run.PADDING_FLOATS"
  assert orbax_tmp_dirs(checkpoints)  # the torn write is there, and is ignored
  manager = runs.checkpoint_manager(workdir)
  assert manager.latest_step() == EVERY
  previous = manager.restore(EVERY)
  assert int(previous["step"]) == EVERY and all_finite(previous)

  resumed = run_cli([*CLI_FLAGS, "--workdir", workdir, "--resume"], script=FAULT_RUN,
                    CONTRAX_SKIP_FINAL_EVAL="1")
  assert resumed.returncode == 0, resumed.stderr
  a, b = restore(uninterrupted_run), restore(workdir)
  assert int(b["step"]) == STEPS and not orbax_tmp_dirs(checkpoints)
  assert_states_equal(a, b)


@pytest.mark.slow
def test_sigkill_during_async_checkpoint_write_while_training_goes_on(uninterrupted_run,
                                                                     tmp_path):
  """orbax writes asynchronously: the step after a checkpoint does not wait for the write
  (steps past it are logged while the write is still in its temporary directory), and a
  crash during that write leaves the previous checkpoint loadable; --resume completes."""
  workdir, slow_step = str(tmp_path), 2 * EVERY
  checkpoints = os.path.join(workdir, "checkpoints")
  process = subprocess.Popen(
      [sys.executable, FAULT_RUN, *CLI_FLAGS, "--workdir", workdir], cwd=ROOT,
      env=subprocess_env(CONTRAX_SKIP_FINAL_EVAL="1", CONTRAX_SLOW_SAVE_AT=str(slow_step)),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 500
    while time.time() < deadline and process.poll() is None:
      if (os.path.isdir(checkpoints) and any(n.startswith(f"{slow_step}.")
                                             for n in orbax_tmp_dirs(checkpoints))
          and max(losses(workdir), default=0) > slow_step):
        break
      time.sleep(0.005)
    assert process.poll() is None, "the run ended before its checkpoint write was caught"
    os.kill(process.pid, signal.SIGKILL)
  finally:
    process.kill()
    process.wait()
  assert not os.path.exists(os.path.join(checkpoints, str(slow_step))), \
      "the write committed before the kill; enlarge _fault_run.PADDING_FLOATS"
  assert max(losses(workdir)) > slow_step  # training went on during the write
  manager = runs.checkpoint_manager(workdir)
  assert manager.latest_step() == EVERY
  assert all_finite(manager.restore(EVERY))
  resumed = run_cli([*CLI_FLAGS, "--workdir", workdir, "--resume"], script=FAULT_RUN,
                    CONTRAX_SKIP_FINAL_EVAL="1")
  assert resumed.returncode == 0, resumed.stderr
  assert_states_equal(restore(uninterrupted_run), restore(workdir))


def test_checkpoint_manager_writes_asynchronously(tmp_path):
  manager = runs.checkpoint_manager(str(tmp_path))
  assert manager._options.enable_async_checkpointing  # the option runs.checkpoint_manager sets


# ----------------------------------------------------------------------------- 2b. preemption


@pytest.mark.slow
def test_sigterm_saves_at_the_step_boundary_exits_0_and_resume_is_bit_equal(uninterrupted_run,
                                                                            tmp_path):
  """A real SIGTERM to the running CLI (paused right after step k's record, so the signal
  lands mid-run): the step finishes, its checkpoint is committed at step k (not a regular
  checkpoint step), the CLI exits 0 without a summary, and --resume ends bit-equal to the
  uninterrupted run."""
  workdir, k = str(tmp_path / "run"), EVERY + 2
  go = str(tmp_path / "go")
  process = subprocess.Popen(
      [sys.executable, FAULT_RUN, *CLI_FLAGS, "--workdir", workdir], cwd=ROOT, text=True,
      env=subprocess_env(CONTRAX_SKIP_FINAL_EVAL="1", CONTRAX_PAUSE_AT_STEP=str(k),
                         CONTRAX_GO_FILE=go),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    assert process.stdout.readline().strip() == f"PAUSED AT STEP {k}"
    os.kill(process.pid, signal.SIGTERM)
    open(go, "w").close()
    _, stderr = process.communicate(timeout=300)
  finally:
    process.kill()
    process.wait()
  assert process.returncode == 0, stderr
  assert f"preempted: stopped after step {k}" in stderr
  assert runs.checkpoint_manager(workdir).latest_step() == k
  assert max(losses(workdir)) == k and not os.path.exists(f"{workdir}/summary.json")

  resumed = run_cli([*CLI_FLAGS, "--workdir", workdir, "--resume"], script=FAULT_RUN,
                    CONTRAX_SKIP_FINAL_EVAL="1")
  assert resumed.returncode == 0, resumed.stderr
  a, b = restore(uninterrupted_run), restore(workdir)
  assert jax.tree.structure(a) == jax.tree.structure(b) and int(b["step"]) == STEPS
  for x, y in zip(leaves(a), leaves(b)):
    np.testing.assert_array_equal(x, y)  # bit-equal: same batches, keys and device
  assert losses(workdir) == losses(uninterrupted_run)


def test_preemption_watch_installs_and_restores_a_sigterm_handler():
  before = signal.getsignal(signal.SIGTERM)
  with runs.PreemptionWatch() as watch:
    assert not watch.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)  # recorded, not fatal
    time.sleep(0.01)
    assert watch.reached(2)
  assert signal.getsignal(signal.SIGTERM) is before


def toy_state(value: float, step: int) -> train.TrainState:
  params = {"w": jnp.full((3, 4), value), "b": jnp.arange(4.0) + value}
  return train.TrainState(step=jnp.asarray(step, jnp.int32), params=params, batch_stats={},
                          opt_state=optax.adam(0.1).init(params))


def test_partial_checkpoint_left_by_a_crash_is_never_loaded(tmp_path):
  """The directory orbax leaves when killed mid-write (its temporary name, no commit marker)."""
  workdir = str(tmp_path)
  manager = runs.checkpoint_manager(workdir)
  runs.save(manager, toy_state(1.0, 4))
  manager.wait_until_finished()
  checkpoints = os.path.join(workdir, "checkpoints")
  torn = os.path.join(checkpoints, "8.orbax-checkpoint-tmp")
  shutil.copytree(os.path.join(checkpoints, "4"), torn)
  for root, _, files in os.walk(torn):  # half-written: commit marker gone, data truncated
    for name in files:
      path = os.path.join(root, name)
      if name == "commit_success.txt":
        os.remove(path)
      else:
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
  manager = runs.checkpoint_manager(workdir)
  assert manager.latest_step() == 4
  restored = runs.restore(manager, toy_state(0.0, 0))
  assert int(restored.step) == 4
  assert_states_equal(restored.params, toy_state(1.0, 4).params, atol=0)
  assert_states_equal(restored.opt_state, toy_state(1.0, 4).opt_state, atol=0)
  runs.save(manager, toy_state(2.0, 12))  # the run goes on: the torn write is cleaned up
  manager.wait_until_finished()
  assert manager.all_steps() == [4, 12] and not os.path.exists(torn)


def test_metrics_line_torn_by_a_crash_does_not_block_resume(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  records = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
    f.write('{"step": 6, "loss": 0.1')  # killed mid-write
  log = runs.MetricsLog(path, enabled=True)
  log.forget_after(4)
  log.write({"step": 5, "loss": 0.5})
  assert runs.read_metrics(str(tmp_path)) == records[:4] + [{"step": 5, "loss": 0.5}]


# ----------------------------------------------------------------------------- 3. non-finite


@jax.custom_vjp
def nan_gradient(x):
  """Identity whose gradient is NaN: a finite loss with non-finite gradients."""
  return x


nan_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.full_like(g, jnp.nan),))


def poison_gradients_from(monkeypatch, first_bad_step: int):
  """From step `first_bad_step` on, the step's loss is finite but its gradients are NaN."""
  original = train.make_train_step

  def make_train_step(method, optimizer, mesh, *, seed, probe=None):
    def bad_loss(outputs, extra, **kwargs):
      return method.loss(jax.tree.map(nan_gradient, outputs), extra, **kwargs)
    good = original(method, optimizer, mesh, seed=seed, probe=probe)
    bad = original(method._replace(loss=bad_loss), optimizer, mesh, seed=seed, probe=probe)
    return lambda state, images, labels: (bad if int(state.step) >= first_bad_step else good)(
        state, images, labels)

  monkeypatch.setattr(train, "make_train_step", make_train_step)


def test_nan_gradient_with_finite_loss_stops_naming_step_and_last_checkpoint(
    tmp_path, monkeypatch, no_final_eval):
  poison_gradients_from(monkeypatch, 4)
  workdir = str(tmp_path)
  with pytest.raises(FloatingPointError) as error:
    train.pretrain(tiny_config(checkpoint_every=3), workdir)
  message = str(error.value)
  last_good = os.path.join(workdir, "checkpoints", "3")
  assert re.search(r"at step 4 \(loss=[0-9.]+, grad_norm=nan\)", message), message
  assert message.endswith(f"last good checkpoint: {last_good}"), message
  assert os.path.isdir(last_good)  # committed before the error was raised
  manager = runs.checkpoint_manager(workdir)
  assert manager.all_steps() == [3]
  state = manager.restore(3)
  assert int(state["step"]) == 3 and all_finite(state)


def test_nan_gradient_skip_policy_drops_exactly_those_updates(tmp_path, monkeypatch,
                                                              no_final_eval):
  poison_gradients_from(monkeypatch, 3)
  workdir = str(tmp_path)
  train.pretrain(tiny_config(checkpoint_every=3, on_nonfinite="skip"), workdir)
  before, after = restore(workdir, 3), restore(workdir, 6)  # steps 3, 4, 5 were skipped
  assert int(after["step"]) == 6 and all_finite(after)
  assert_states_equal(before["params"], after["params"], atol=0)
  assert_states_equal(before["opt_state"], after["opt_state"], atol=0)


def test_overflowing_update_is_never_checkpointed(tmp_path, monkeypatch, no_final_eval):
  """Finite loss and gradients, but a learning rate beyond float32 makes the new parameters
  infinite: the step must count as non-finite, before its state can be checkpointed."""
  monkeypatch.setattr(train, "make_optimizer", lambda config: optax.sgd(1e39))
  workdir = str(tmp_path)
  with pytest.raises(FloatingPointError, match=r"at step 0 \(loss=[0-9.]+, grad_norm=[0-9.]+\)"
                     r".*last good checkpoint: none"):
    train.pretrain(tiny_config(checkpoint_every=1), workdir)
  assert runs.checkpoint_manager(workdir).latest_step() is None


# ----------------------------------------------------------------------------- 5. bad config
# (before 4: the no-compilation fixture is shared)


@pytest.fixture
def no_compilation(monkeypatch):
  """Fails a test that reaches model building or step construction, and counts JAX traces."""
  def reached(name):
    def fail(*args, **kwargs):
      raise AssertionError(f"{name} was reached: the error came after compilation started")
    return fail

  monkeypatch.setattr(train, "make_train_step", reached("make_train_step"))
  monkeypatch.setattr(train, "init_state", reached("init_state"))
  monkeypatch.setattr(models, "create", reached("models.create"))
  traces = []

  def listener(event, duration, **kwargs):
    if event.startswith("/jax/core/compile/"):
      traces.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield traces
  jax.monitoring.unregister_event_duration_listener(listener)
  assert traces == [], f"JAX traced or compiled before the error: {traces}"


@pytest.mark.parametrize("field,value,match", [
    ("loss.name", "infonce_typo", r"unknown loss.name 'infonce_typo'; valid choices: .*'infonce'"),
    ("weighting.name", "hard", r"unknown weighting.name 'hard'; valid choices: .*'hcl'"),
    ("model", "vgg", r"unknown model 'vgg'; valid choices: .*'mlp'"),
    ("augmentation", "fancy", r"unknown augmentation preset 'fancy'; valid choices: .*'simclr'"),
    ("data", "imagenet", r"unknown data source 'imagenet'; valid choices: .*'folder'"),
    ("on_nonfinite", "ignore", r"unknown on_nonfinite 'ignore'; valid choices: 'stop', 'skip'"),
    ("on_bad_file", "ignore", r"unknown on_bad_file 'ignore'; valid choices: 'skip', 'raise'"),
    ("batch_size", 2000, r"batch_size 2000 is larger than the 1347 training images"),
    ("batch_size", 0, r"batch_size must be an integer >= 1, got 0"),
    ("learning_rate", 0.0, r"learning_rate must be a finite number > 0, got 0\.0"),
    ("learning_rate", -1e-3, r"learning_rate must be a finite number > 0, got -0\.001"),
    ("loss.temperature", 0.0, r"temperature must be .*got 0\.0"),
    ("loss.temperature", -0.5, r"temperature must be .*got -0\.5"),
    ("num_devices", 9, r"num_devices must be .*got 9"),
    ("data", "folder:/nonexistent/images", r"image folder '/nonexistent/images' does not exist"),
])
def test_bad_config_is_a_clear_error_before_any_compilation(tmp_path, no_compilation, field,
                                                            value, match):
  with pytest.raises(train.ConfigError, match=match):
    train.pretrain(tiny_config(**{field: value}), str(tmp_path / "run"))


def test_batch_that_does_not_fit_the_mesh_is_an_error_before_compilation(tmp_path,
                                                                         no_compilation):
  with pytest.raises(train.ConfigError, match="not divisible"):
    train.pretrain(tiny_config(num_devices=8, batch_size=12), str(tmp_path))


def test_unwritable_output_directory_is_an_error_before_compilation(tmp_path, no_compilation):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(train.ConfigError, match=r"workdir '.*a_file/run' is not writable"):
    train.pretrain(tiny_config(), str(blocker / "run"))
  if os.geteuid() != 0:  # root writes through permission bits
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(train.ConfigError, match="not writable"):
      train.pretrain(tiny_config(), str(locked / "run"))


# ----------------------------------------------------------------------------- 4. bad data


def image_folder(root, classes=("circle", "square"), per_class=14) -> str:
  """Readable 8×8 grayscale PNGs, `per_class` in each class folder."""
  rng = np.random.default_rng(0)
  for c, name in enumerate(classes):
    os.makedirs(root / name)
    for i in range(per_class):
      image = rng.integers(0, 128, (8, 8), dtype=np.uint8) + 100 * c
      Image.fromarray(image.astype(np.uint8)).save(root / name / f"{i}.png")
  return f"folder:{root}"


def corrupt_image_folder(root) -> str:
  """2 classes of 14 readable images, plus a corrupt PNG, a text file and a dangling link."""
  spec = image_folder(root)
  (root / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  (root / "square" / "notes.txt").write_text("not an image")
  os.symlink(root / "gone.png", root / "square" / "moved.png")  # unreadable: no such file
  return spec


def test_corrupt_image_folder_refused_before_compiling_with_raise(tmp_path, no_compilation):
  spec = corrupt_image_folder(tmp_path / "images")
  with pytest.raises(train.ConfigError, match=r"3 of 31 files are not readable images: "
                     r".*broken\.png.*moved\.png \(not a regular file\).*notes\.txt"):
    train.pretrain(tiny_config(data=spec, batch_size=8, on_bad_file="raise"),
                   str(tmp_path / "run"))


def npz_file(path, **changes) -> str:
  rng = np.random.default_rng(1)
  arrays = dict(x_train=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
                y_train=np.arange(40) % 3, x_test=rng.integers(0, 256, (9, 8, 8), dtype=np.uint8),
                y_test=np.arange(9) % 3)
  arrays.update(changes)
  np.savez(path, **arrays)
  return f"npz:{path}"


@pytest.mark.parametrize("make,match", [
    (lambda root: image_folder(root, classes=("only",)), "at least 2 classes, found 1"),
    (lambda root: (image_folder(root, classes=("a",)), os.makedirs(root / "b"))[0],
     r"class folder .*b'? is empty"),
    (lambda root: npz_file(root / "d.npz", y_train=np.arange(39) % 3),
     "x_train and y_train must have the same length"),
    (lambda root: npz_file(root / "d.npz", x_test=np.zeros((9, 7, 8), np.uint8)),
     "must share the image shape"),
    (lambda root: npz_file(root / "d.npz", class_names=np.array(["a", "b"])),
     r"labels must lie in \[0, 2\)"),
    (lambda root: npz_file(root / "d.npz", y_test=-(np.arange(9) % 3)), "y_test must be >= 0"),
])
def test_unusable_data_is_an_error_before_compilation(tmp_path, no_compilation, make, match):
  (tmp_path / "data").mkdir()
  spec = make(tmp_path / "data")
  with pytest.raises(train.ConfigError, match=match):
    train.pretrain(tiny_config(data=spec, batch_size=8), str(tmp_path / "run"))


def test_corrupt_image_folder_trains_with_skip(tmp_path, no_final_eval):
  spec = corrupt_image_folder(tmp_path / "images")
  with pytest.warns(UserWarning, match=r"3 of 31 files are not readable images.*skipped") as w:
    summary = train.pretrain(tiny_config(data=spec, batch_size=8, steps=2, checkpoint_every=0),
                             str(tmp_path / "run"))
  assert [r.filename for r in w] == [__file__]  # the warning names the user's call (19.11)
  assert summary["steps"] == 2
  assert all_finite(restore(str(tmp_path / "run")))


# ----------------------------------------------------------------------------- 5. the CLI


def assert_one_line_error(done: subprocess.CompletedProcess, status: int, pattern: str):
  assert done.returncode == status, (done.returncode, done.stderr)
  assert "Traceback" not in done.stderr, done.stderr
  errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and re.search(pattern, errors[0]), done.stderr


@pytest.mark.parametrize("flags,pattern", [
    (["--config.loss.name=nope"],
     r"^error: unknown loss.name 'nope'; valid choices: .*'infonce'"),
    (["--config.weighting.name=nope"],
     r"^error: unknown weighting.name 'nope'; valid choices: .*'hcl', .*'ot'"),
    (["--config.steps=many"], r"^error: flag --config.steps=many: .*'many'$"),
    (["--config.num_devices=2"], r"^error: num_devices must be .*got 2$"),
    (["--config.batch_size=5000"], r"^error: batch_size 5000 is larger than the 1347 training"),
    (["--config.nope=1"], r"^error: .*config.nope"),
    (["--config", "mnist"], r"^error: unknown --config 'mnist'; valid choices: cifar10, "
                            r"digits, imagenet, stl10$"),
    (["--resume", "--overwrite"], r"^error: resume and overwrite exclude each other"),
])
def test_cli_bad_input_is_one_error_line_and_status_2(tmp_path, flags, pattern):
  done = run_cli([*flags, "--workdir", str(tmp_path / "run"), "--config.progress=false"])
  assert_one_line_error(done, 2, pattern)
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_cli_unwritable_workdir_and_corrupt_folder(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  done = run_cli(["--workdir", str(blocker / "run")])
  assert_one_line_error(done, 2, r"^error: workdir '.*a_file/run' is not writable")
  spec = corrupt_image_folder(tmp_path / "images")
  done = run_cli([f"--config.data={spec}", "--config.on_bad_file=raise",
                  "--config.batch_size=8", "--workdir", str(tmp_path / "run")])
  assert_one_line_error(done, 2, r"^error: image folder .*3 of 31 files are not readable")
