"""The training loop: one jitted, sharded step and a `fit` driver around it.

Data flow of a step (DESIGN.md): uint8 batch sharded over the data axis → jitted
`shard_map` step: two augmented views with per-sample keys derived from the step number and
the sample's global index → encoder + head → loss (local rows × global columns) → gradients
(already summed over devices, since the loss is a global mean) → optax update → new state +
metrics. A single device is a mesh of size 1: there is one code path.

A run is a pure function of its config and seed: the data order and the augmentation keys
depend only on (seed, step), so a run resumed from a checkpoint at step k ends with the same
parameters as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from contrax import _checks, augment, data, evaluate, models, objectives, pairs, parallel, plotting

LossFn = objectives.LossFn  # (z1, z2, *, axis_name) -> scalar


# ----------------------------------------------------------------------------- config


def default_config() -> ml_collections.ConfigDict:
  """SimCLR on the embedded digits data: the main job's defaults (see experiments/pretrain.py)."""
  c = ml_collections.ConfigDict()
  c.name = "pretrain"
  c.data = "digits"
  c.model = "mlp"
  c.projection_dim = 64
  c.widths = ()          # convnet / resnet18 stage widths; () = the model's default
  c.augmentation = "digits"
  objective = objectives.default_config()  # loss.*, weighting.* (objectives.PRESETS)
  c.loss = objective.loss
  c.weighting = objective.weighting
  c.batch_size = 256
  c.steps = 1500
  c.optimizer = "adamw"
  c.learning_rate = 1e-3
  c.weight_decay = 1e-4
  c.warmup_steps = 100
  c.seed = 0
  c.num_devices = 0      # 0: all devices JAX sees
  c.log_every = 50
  c.eval_every = 500     # kNN on the test split during training; 0 disables
  c.checkpoint_every = 500
  c.on_nonfinite = "stop"  # or "skip": drop the update of a step whose loss/gradients are not finite
  c.on_bad_file = "skip"   # folder data: skip unreadable/non-image files (reported), or "raise"
  c.knn_k = 200
  c.progress = True
  return c


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Optimiser with linear warm-up and cosine decay over `steps`."""
  lr = _checks.positive("learning_rate", config.learning_rate)
  steps = _checks.positive_int("steps", config.steps)
  warmup = min(int(config.warmup_steps), steps - 1) if steps > 1 else 0
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 0), steps) \
      if warmup > 0 else optax.cosine_decay_schedule(lr, steps)
  wd = _checks.non_negative("weight_decay", config.weight_decay)
  name = _checks.choice("optimizer", config.optimizer, ("adam", "adamw", "sgd", "lars"))
  if name == "adam":
    return optax.adam(schedule)
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=wd)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(wd), optax.sgd(schedule, momentum=0.9))
  not_bias_or_norm = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
  return optax.lars(schedule, weight_decay=wd, weight_decay_mask=not_bias_or_norm,
                    trust_ratio_mask=not_bias_or_norm, momentum=0.9)


# ----------------------------------------------------------------------------- state and step


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def init_state(model, optimizer, key, image_shape) -> TrainState:
  dummy = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  variables = model.init(key, dummy, train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=optimizer.init(params))


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(model, optimizer: optax.GradientTransformation, loss_fn: LossFn,
                    augmentation: augment.Augmentation, mesh, *, seed: int):
  """Return `step(state, images) -> (state, metrics)`, jitted and sharded over `mesh`.

  `images` is the uint8 global batch sharded over the data axis. A step whose loss or
  gradients, or whose updated parameters or optimiser state (an overflowing update), are not
  finite leaves parameters and optimiser state unchanged and reports `finite = False` (the
  caller decides whether to stop or go on), so non-finite values never reach the state.
  """
  parallel.check_mesh(mesh)  # a mesh that cannot run here fails before anything is traced
  axis = parallel.DATA_AXIS
  base_key = jax.random.key(seed)

  def local_step(state: TrainState, images):
    local = images.shape[0]
    key = jax.random.fold_in(base_key, state.step)
    sample_ids = pairs.device_offset(local, axis) + jnp.arange(local)
    view1, view2 = augment.two_views(augmentation, key, images, sample_ids)

    def loss_of(params):
      (_, proj), updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats},
          jnp.concatenate([view1, view2]), train=True, mutable=["batch_stats"])
      z1, z2 = jnp.split(proj, 2)
      return loss_fn(z1, z2, axis_name=axis), updates.get("batch_stats", {})

    (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = (jnp.isfinite(loss) & _all_finite(grads) & _all_finite(params)
              & _all_finite(opt_state))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           batch_stats=keep(batch_stats, state.batch_stats),
                           opt_state=keep(opt_state, state.opt_state))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "finite": finite}
    return new_state, metrics

  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,))


# ----------------------------------------------------------------------------- the driver


def _check_workdir(workdir: str) -> str:
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    # A uniquely named probe: every process of a multi-host run checks the same directory.
    with tempfile.TemporaryFile(dir=workdir) as f:
      f.write(b"ok")
  except OSError as e:
    raise ValueError(f"workdir {workdir!r} is not writable: {e}") from None
  return workdir


class ConfigError(ValueError):
  """A run that cannot start: a bad config, output directory or data set.

  `pretrain` raises it (with the underlying error as `__cause__`) before anything is
  compiled; the experiment CLI prints it as one `error: ...` line and exits with status 2.
  """


def validate_config(config: ml_collections.ConfigDict):
  """Check every name and number of a config before any data loading or compilation."""
  _checks.choice("data source", config.data.split(":", 1)[0], data.SOURCES)
  _checks.choice("model", config.model, models.MODELS)
  augmentation = augment.get(config.augmentation)
  loss_fn = objectives.make(config)
  optimizer = make_optimizer(config)
  _checks.positive_int("batch_size", config.batch_size)
  _checks.choice("on_nonfinite", config.on_nonfinite, ("stop", "skip"))
  _checks.choice("on_bad_file", config.get("on_bad_file", "skip"), ("skip", "raise"))
  mesh = parallel.make_mesh(config.num_devices or None)
  parallel.check_global_batch(config.batch_size, mesh)
  return augmentation, loss_fn, optimizer, mesh


class _MetricsLog:
  """Appends JSON lines (process 0 only); on resume, forgets records past the restored step."""

  def __init__(self, path: str, start_step: int, enabled: bool):
    self.path, self.enabled = path, enabled
    if enabled and os.path.exists(path):
      kept = []
      with open(path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except ValueError:  # a line torn by a crash mid-write: its step is redone
            continue
          if record["step"] <= start_step:
            kept.append(line if line.endswith("\n") else line + "\n")
      with open(path, "w") as f:
        f.writelines(kept)

  def write(self, record: dict) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_metrics(workdir: str) -> list[str]:
  """loss.png (training loss vs step) and accuracy.png (evaluation accuracy vs step)."""
  records = read_metrics(workdir)
  written = []
  train = [r for r in records if "loss" in r]
  if train:
    path = os.path.join(workdir, "loss.png")
    plotting.line_plot(path, {"train loss": ([r["step"] for r in train], [r["loss"] for r in train])},
                       xlabel="step", ylabel="loss", title="training loss")
    written.append(path)
  evals = [r for r in records if "knn_accuracy" in r]
  if evals:
    path = os.path.join(workdir, "accuracy.png")
    plotting.line_plot(path, {"kNN test accuracy": ([r["step"] for r in evals],
                                                    [r["knn_accuracy"] for r in evals])},
                       xlabel="step", ylabel="kNN test accuracy",
                       title="kNN accuracy on the held-out test split", markers=True)
    written.append(path)
  return written


def checkpoint_manager(workdir: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """orbax manager under `workdir/checkpoints`; writes are atomic (temp dir, then rename).

  A write cut short by a crash leaves only its temporary directory, which `latest_step` never
  returns and which the next manager on this directory deletes.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options)


def _save(manager: ocp.CheckpointManager, state: TrainState) -> None:
  manager.save(int(state.step), args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
               force=True)


def _restore(manager: ocp.CheckpointManager, state: TrainState) -> TrainState:
  step = manager.latest_step()
  target = flax.serialization.to_state_dict(state)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return flax.serialization.from_state_dict(state, restored)


def create_model(config: ml_collections.ConfigDict) -> models.ContrastiveModel:
  """The model of a run: `config.model` with its projection and (if set) stage widths."""
  widths = tuple(config.get("widths", ()))
  try:  # a CLI value (`--widths 32,64,128,256`) arrives as strings
    widths = tuple(int(w) for w in widths)
  except (TypeError, ValueError):
    raise ValueError(f"widths must be positive integers, got {config.widths!r}") from None
  if any(w < 1 for w in widths):
    raise ValueError(f"widths must be positive integers, got {widths!r}")
  if widths and config.model == "mlp":
    raise ValueError(f"widths={widths!r} applies to the convnet and resnet18 models, "
                     "not 'mlp'")
  return models.create(config.model, projection_dim=config.projection_dim,
                       bn_axis_name=parallel.DATA_AXIS, **({"widths": widths} if widths else {}))


def load_trained(config: ml_collections.ConfigDict, workdir: str, image_shape):
  """`(model, variables)` of the latest checkpoint of a `pretrain(config, workdir)` run."""
  model = create_model(config)
  state = init_state(model, make_optimizer(config), jax.random.key(0), image_shape)
  return model, _restore(checkpoint_manager(workdir), state).variables()


def pretrain_once(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The summary of `pretrain(config, workdir)`, training only what is not finished.

  A `workdir` with summary.json is a finished run: its summary is returned without training,
  after checking that its config.json agrees with `config` on every key both hold (a finished
  run of another config raises ValueError naming the keys; it is never silently reused).
  Otherwise the run starts, or resumes from its last checkpoint. Studies of many runs call this
  so that re-running one after an interruption redoes nothing that finished.
  """
  summary_path = os.path.join(workdir, "summary.json")
  if not os.path.exists(summary_path):
    return pretrain(config, workdir,
                    resume=os.path.isdir(os.path.join(workdir, "checkpoints")))
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  wanted = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as saved
  differ = sorted(k for k in saved.keys() & wanted.keys() if saved[k] != wanted[k])
  if differ:
    raise ValueError(
        f"{workdir} holds a finished run of another config ("
        + ", ".join(f"{k}: {saved[k]!r} there, {wanted[k]!r} here" for k in differ)
        + "); use another workdir or delete that run")
  with open(summary_path) as f:
    return json.load(f)


def pretrain(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False) -> dict:
  """Contrastive pre-training plus evaluation; writes the run directory and returns the summary.

  Run directory: config.json, metrics.jsonl, loss.png, accuracy.png, summary.json (final
  kNN / linear-probe / nearest-centre accuracies and wall time), checkpoints/.
  """
  start_time = time.time()
  try:  # every check a user can act on, before anything is compiled
    augmentation, loss_fn, optimizer, mesh = validate_config(config)
    workdir = _check_workdir(workdir)
    options = ({"on_bad_file": config.get("on_bad_file", "skip")}
               if config.data.startswith("folder:") else {})
    dataset = data.load(config.data, seed=config.seed, **options)
    train_split = dataset.train
    if config.batch_size > len(train_split):
      raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train_split)} "
                       f"training images of {config.data!r}")
    model = create_model(config)  # builds the module only: nothing is traced or compiled
  except (ValueError, TypeError, OSError) as e:
    raise ConfigError(str(e)) from e
  is_chief = jax.process_index() == 0
  # Every process computes the same replicated values: only the chief reports them.
  say = tqdm.write if is_chief else (lambda message: None)
  if is_chief:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config.to_dict(), f, indent=2)

  key = jax.random.key(config.seed)
  state = init_state(model, optimizer, jax.random.fold_in(key, 1), train_split.image_shape)
  state = jax.device_put(state, parallel.replicated(mesh))
  manager = checkpoint_manager(workdir)
  if resume and manager.latest_step() is not None:
    state = _restore(manager, state)
  elif resume:
    say(f"--resume: no checkpoint in {workdir}/checkpoints; starting from step 0")
  start_step = int(state.step)
  log = _MetricsLog(os.path.join(workdir, "metrics.jsonl"), start_step, is_chief)
  step_fn = make_train_step(model, optimizer, loss_fn, augmentation, mesh, seed=config.seed)

  def knn_now() -> float:
    tr = evaluate.extract_features(model, state.variables(), dataset.train)
    te = evaluate.extract_features(model, state.variables(), dataset.test)
    return evaluate.knn(*tr, *te, k=config.knn_k, num_classes=dataset.num_classes)

  batch_iter = data.prefetch(data.batches(
      train_split, batch_size=config.batch_size, seed=config.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count()))
  bar = tqdm(total=config.steps, initial=start_step, disable=not (config.progress and is_chief),
             desc=f"{config.name} {objectives.describe(config)}", unit="step", dynamic_ncols=True)
  last_good = manager.latest_step()

  def check_finite(step: int, metrics) -> None:
    """Stop (or warn, under on_nonfinite='skip') if step `step` was not finite."""
    if bool(metrics["finite"]):
      return
    message = (f"non-finite loss, gradients or update at step {step} "
               f"(loss={float(metrics['loss'])}, grad_norm={float(metrics['grad_norm'])}); "
               f"the update was not applied")
    if config.on_nonfinite == "stop":
      ckpt = (f"{workdir}/checkpoints/{last_good}" if last_good is not None else "none")
      bar.close()
      manager.wait_until_finished()  # the checkpoint named in the message is committed
      raise FloatingPointError(f"{message}; last good checkpoint: {ckpt}")
    say(f"warning: {message}; skipping (on_nonfinite='skip')")

  # A step's `finite` flag is read one step late, after the next step is dispatched, so the
  # host never waits for the device between steps (no per-step round trip); it is read at
  # once before anything that looks at the state (log, evaluation, checkpoint). A
  # non-finite step never changes the state, so the lag cannot let bad values through.
  pending = None
  train_seconds, images_seen, step_start = 0.0, 0, time.time()
  for step in range(start_step, config.steps):
    images, _ = next(batch_iter)
    state, metrics = step_fn(state, parallel.shard_host_batch(images, mesh))
    if pending is not None:
      check_finite(*pending)
    pending = (step, metrics)
    done = step + 1
    if (done % config.log_every == 0 or done == config.steps
        or (config.eval_every and done % config.eval_every == 0)
        or (config.checkpoint_every and done % config.checkpoint_every == 0)):
      check_finite(*pending)
      pending = None
    if done % config.log_every == 0 or done == config.steps:
      elapsed = time.time() - step_start
      if step > start_step:  # the first interval includes compilation
        train_seconds += elapsed
        images_seen += config.batch_size * config.log_every
      record = {"step": done, "loss": float(metrics["loss"]),
                "grad_norm": float(metrics["grad_norm"]), "time": time.time() - start_time}
      log.write(record)
      bar.set_postfix(loss=f"{record['loss']:.4f}")
      step_start = time.time()
    if config.eval_every and done % config.eval_every == 0 and done != config.steps:
      acc = knn_now()
      log.write({"step": done, "knn_accuracy": acc})
      say(f"step {done}: kNN test accuracy {acc:.4f}")
    if config.checkpoint_every and done % config.checkpoint_every == 0:
      _save(manager, state)
      last_good = done
    bar.update(1)
  bar.close()
  if manager.latest_step() != int(state.step):
    _save(manager, state)
  manager.wait_until_finished()

  results = evaluate.evaluate_all(model, state.variables(), dataset, knn_k=config.knn_k)
  log.write({"step": int(state.step), "knn_accuracy": results["knn_accuracy"]})
  summary = {
      "data": config.data, "model": config.model, "loss": objectives.describe(config), "steps": int(state.step),
      **results,
      "images_per_second": images_seen / train_seconds if train_seconds > 0 else None,
      "wall_seconds": time.time() - start_time,
      "devices": int(mesh.size),
  }
  if is_chief:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    plot_metrics(workdir)
  return summary
