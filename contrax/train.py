"""The training loop: `TrainState`, one jitted, sharded step and `fit`, the loop around it.

Data flow of a step: uint8 batch sharded over the data axis → jitted `shard_map` step: the
method's views (per-sample keys derived from the step number and the sample's global index) →
its networks → its loss (local rows × global columns) → gradients (already summed over
devices, since the loss is a global mean) → optax update → the method's extra state → new
state + metrics. Beside the method, the step trains an online linear probe on the first view's
detached encoder features and returns those features and projections, from which `fit`
computes collapse diagnostics when it logs (`contrax.monitor`). A single device is a mesh of
size 1: there is one code path. `pretrain` composes config → data → run directory
(`contrax.runs`) → method (`contrax.methods`) → `fit`.

A run is a pure function of its config and seed: the data order and the augmentation keys
depend only on (seed, step), so a run resumed from a checkpoint at step k ends with the same
parameters as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from contrax import (_checks, augment, crops, data, evaluate, loader, methods, models,
                     monitor, objectives, pairs, parallel, runs)

__all__ = [
    "LossFn", "default_config", "OPTIMIZERS", "COMPUTE_DTYPES", "compute_dtype",
    "make_schedule", "make_optimizer", "create_model", "create_method", "create_probe",
    "TrainState", "init_state", "make_train_step", "fit", "ConfigError", "validate_config",
    "pretrain", "checkpoint_manager", "read_metrics", "pretrain_once", "load_trained",
]

LossFn = objectives.LossFn  # (z1, z2, *, axis_name) -> scalar


# ----------------------------------------------------------------------------- config


def default_config() -> ml_collections.ConfigDict:
  """SimCLR on the embedded digits data: the main job's defaults (see experiments/pretrain.py)."""
  c = ml_collections.ConfigDict()
  c.name = "pretrain"
  c.data = "digits"
  c.model = "mlp"
  c.projection_dim = 64
  c.widths = ()          # convnet / resnet stage widths; () = the model's default
  c.patch_size = 0       # ViT patch size; 0 = by image size (16 at 224 px, 4 at 32 px)
  c.compute_dtype = "float32"  # or "bfloat16": activations and matmuls (params stay float32)
  c.augmentation = "digits"
  c.method = methods.default_config()     # method.name, method.<name>.* (contrax.methods)
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
  # Images of varying size (imagefolder:PATH, variable-size tfds:NAME): host-side crops.
  c.image_size = 0         # training / evaluation side; 0 = the source's (imagefolder: 224)
  c.crop_scale = (0.08, 1.0)   # random-resized crop: area fraction range (SimCLR)
  c.crop_ratio = (3 / 4, 4 / 3)  # and aspect ratio w/h range (log-uniform)
  c.num_crops = 2          # crops per image (the method's views)
  c.data_workers = 0       # Grain decoding processes per host (0: in the training process)
  c.pretrain_split = ""    # tfds:NAME only: the split pre-training reads ("" = train)
  c.knn_k = 200
  c.online_probe = True  # a linear classifier on detached features, trained in the step
  c.probe_learning_rate = 1e-3
  c.progress = True
  return c


OPTIMIZERS = ("adam", "adamw", "sgd", "lars")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Learning rate of update t: linear warm-up from 0 over `warmup_steps`, then cosine decay
  to 0 at `steps` (`optax.warmup_cosine_decay_schedule`)."""
  lr = _checks.positive("learning_rate", config.learning_rate)
  steps = _checks.positive_int("steps", config.steps)
  warmup = min(int(config.warmup_steps), steps - 1) if steps > 1 else 0
  return (optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps) if warmup > 0
          else optax.cosine_decay_schedule(lr, steps))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """`config.optimizer` (one of `OPTIMIZERS`) on `make_schedule(config)`; LARS skips weight
  decay and trust ratio for biases and norm scales (the parameters with ndim <= 1)."""
  schedule = make_schedule(config)
  wd = _checks.non_negative("weight_decay", config.weight_decay)
  name = _checks.choice("optimizer", config.optimizer, OPTIMIZERS)
  if name == "adam":
    return optax.adam(schedule)
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=wd)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(wd), optax.sgd(schedule, momentum=0.9))
  not_bias_or_norm = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
  return optax.lars(schedule, weight_decay=wd, weight_decay_mask=not_bias_or_norm,
                    trust_ratio_mask=not_bias_or_norm, momentum=0.9)


def _encoder_options(config: ml_collections.ConfigDict) -> dict:
  """`{"widths": ...}` / `{"patch_size": ...}` if the config sets them (checked), else `{}`."""
  widths = tuple(config.get("widths", ()))
  if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
    raise ValueError(f"widths must be positive integers, got {widths!r}")
  if widths and config.model not in ("convnet", "resnet18", "resnet50"):
    raise ValueError(f"widths={widths!r} applies to the convnet and resnet18 models "
                     f"(and resnet50), not {config.model!r}")
  options: dict[str, Any] = {"widths": widths} if widths else {}
  patch_size = config.get("patch_size", 0)
  if patch_size:
    _checks.positive_int("patch_size", patch_size)
    if config.model not in models.VIT_VARIANTS:
      raise ValueError(f"patch_size={patch_size!r} applies to the ViT models "
                       f"({', '.join(models.VIT_VARIANTS)}), not {config.model!r}")
    options["patch_size"] = int(patch_size)
  return options


def compute_dtype(config: ml_collections.ConfigDict):
  """The compute dtype of `config.compute_dtype` (one of `COMPUTE_DTYPES`; float32 if unset).

  Mixed precision as in Micikevicius et al. 2018, "Mixed Precision Training", with bfloat16
  (its float32 exponent range needs no loss scaling): activations and matmuls run in the
  compute dtype, parameters, gradients and optimiser state stay float32 (flax's
  `param_dtype`), the projection head returns float32, and the loss side (normalisation,
  similarities, log-sum-exp, Barlow's statistics) runs in float32 (`contrax.pairs.build` and
  `contrax.losses.barlow_twins` upcast low-precision inputs).
  """
  name = _checks.choice("compute_dtype", config.get("compute_dtype", "float32"), COMPUTE_DTYPES)
  return COMPUTE_DTYPES[name]


def create_model(config: ml_collections.ConfigDict) -> models.ContrastiveModel:
  """The model of a run: `config.model` with its projection, (if set) stage widths or ViT
  patch size, and its compute dtype (`compute_dtype`)."""
  return models.create(config.model, projection_dim=config.projection_dim,
                       bn_axis_name=parallel.DATA_AXIS, dtype=compute_dtype(config),
                       **_encoder_options(config))


def create_probe(config: ml_collections.ConfigDict,
                 num_classes: int) -> Optional[monitor.OnlineProbe]:
  """The online linear probe of a run (None if `config.online_probe` is off): Adam at the
  constant `probe_learning_rate` (Adam's step does not depend on the features' scale, which
  changes as the encoder trains and differs between encoders)."""
  if not config.get("online_probe", True):
    return None
  lr = _checks.positive("probe_learning_rate", config.get("probe_learning_rate", 1e-3))
  return monitor.OnlineProbe(num_classes=num_classes, optimizer=optax.adam(lr))


def create_method(config: ml_collections.ConfigDict, model) -> methods.Method:
  """The training method of a run (`config.method.name`; SimCLR with the config's objective
  by default)."""
  return methods.create(config, model)


# ----------------------------------------------------------------------------- state and step


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; saved whole in checkpoints.

  `extra` is the method's state beside the parameters (`Method.init_extra`; `{}` for SimCLR).
  `probe` is the online linear probe's `{'params', 'opt_state'}` (`monitor.init_probe`; `{}`
  without a probe).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extra: Any = dataclasses.field(default_factory=dict)
  probe: Any = dataclasses.field(default_factory=dict)

  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def init_state(method: methods.Method, optimizer, key, image_shape, *,
               probe: Optional[monitor.OnlineProbe] = None) -> TrainState:
  """Step 0 of training `method`: its variables (`method.init`), the optimiser's state, the
  method's extra state (`method.init_extra`) and, with `probe`, the online probe's state
  (sized by the encoder's feature dimension)."""
  variables = method.init(key, tuple(image_shape))
  params = variables["params"]
  # Copied: an extra state that starts as the parameters (an EMA target) must not share their
  # buffers, since the step donates the whole state.
  extra = jax.tree.map(jnp.copy, method.init_extra(params))
  probe_state = {}
  if probe is not None:
    features = jax.eval_shape(
        lambda v: method.model.apply(v, jnp.zeros((1, *image_shape), jnp.float32),
                                     method="encode"), variables)
    probe_state = monitor.init_probe(probe, features.shape[-1])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=optimizer.init(params), extra=extra, probe=probe_state)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(method: methods.Method, optimizer: optax.GradientTransformation, mesh, *,
                    seed: int, probe: Optional[monitor.OnlineProbe] = None):
  """Return `step(state, images, labels) -> (state, metrics)`, jitted and sharded over `mesh`.

  One `jax.shard_map` program for one device, many devices and many processes: each device
  takes its rows of the uint8 global batch `images` and of its int `labels` (both sharded
  over the data axis) and runs views (key `fold_in(key(seed), step)`, sample ids = global row
  indices) → `method.apply` → `method.loss` (a global mean: its gradient is already summed
  over devices) → optax update → `method.update_extra`. With `probe`, the online linear probe
  takes one step of its own optimiser on the first view's encoder features, detached
  (`monitor.probe_step`; metrics 'probe_loss' and 'probe_accuracy' over the global batch);
  without it `labels` are not read (None is fine). A step whose loss, gradients, updated
  parameters, optimiser state, extra state or probe state are not finite leaves the state
  unchanged (only `step` advances) and reports `finite = False`; the caller decides whether
  to stop or go on.

  `metrics['embeddings']` holds the first view's features h and projections z as global
  arrays sharded over the data axis (`{'features', 'projections'}`); `fit` computes the
  collapse diagnostics from them when it logs, so steps that are not logged pay nothing.
  """
  parallel.check_mesh(mesh)  # a mesh that cannot run here fails before anything is traced
  axis = parallel.DATA_AXIS
  base_key = jax.random.key(seed)

  def local_step(state: TrainState, images, labels):
    local = images.shape[0]
    key = jax.random.fold_in(base_key, state.step)
    sample_ids = pairs.device_offset(local, axis) + jnp.arange(local)
    views = method.views(key, images, sample_ids)

    def loss_of(params):
      outputs, batch_stats = method.apply({"params": params, "batch_stats": state.batch_stats},
                                          views, state.extra)
      loss, metrics = method.loss(outputs, state.extra, axis_name=axis, step=state.step)
      return loss, (batch_stats, outputs, metrics)

    (loss, (batch_stats, outputs, metrics)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = method.update_extra(state.extra, params, outputs, axis_name=axis, step=state.step)
    features, projections = first_view_embeddings(state, views, outputs)
    probe_state = state.probe
    probe_metrics: dict[str, jax.Array] = {}
    if probe is not None:
      probe_state, probe_metrics = monitor.probe_step(state.probe, probe, features, labels,
                                                      axis_name=axis)
    finite = (jnp.isfinite(loss) & _all_finite(grads) & _all_finite(params)
              & _all_finite(opt_state) & _all_finite(extra) & _all_finite(probe_state))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           batch_stats=keep(batch_stats, state.batch_stats),
                           opt_state=keep(opt_state, state.opt_state),
                           extra=keep(extra, state.extra), probe=keep(probe_state, state.probe))
    metrics = {**metrics, **probe_metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "finite": finite}
    return new_state, metrics, {"features": features, "projections": projections}

  def first_view_embeddings(state: TrainState, views, outputs):
    """(h, z) of the first view, detached: from the outputs if the method says where, else
    one more forward pass of the model (train mode; its BatchNorm statistics dropped)."""
    if method.embeddings is not None:
      features, projections = method.embeddings(outputs)
    else:
      (features, projections), _ = method.model.apply(state.variables(), views[0], train=True,
                                                      mutable=["batch_stats"])
    return jax.lax.stop_gradient((features, projections))

  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(axis), P(axis)),
                          out_specs=(P(), P(), P(axis)))

  def step(state: TrainState, images, labels=None):
    if probe is not None and labels is None:
      raise ValueError("labels=None: the online probe trains on the batch's labels; pass "
                       "them, or build the step without `probe`")
    new_state, metrics, embeddings = sharded(state, images, labels)
    return new_state, {**metrics, "embeddings": embeddings}

  return jax.jit(step, donate_argnums=(0,))


# ----------------------------------------------------------------------------- the loop


def fit(config: ml_collections.ConfigDict, state: TrainState, step_fn, batches, mesh,
        run: runs.Run, *, schedule: optax.Schedule, evaluate_knn: Callable[[TrainState], float]):
  """`_fit_loop` under a `runs.PreemptionWatch`: on a preemption notice (SIGTERM, or JAX's
  preemption sync point with several processes) the current step finishes, every process
  saves its checkpoint at the same step boundary and `runs.Preempted` is raised (the CLI
  exits 0; `--resume` continues bit-equal to an uninterrupted run)."""
  with runs.PreemptionWatch() as preemption:
    return _fit_loop(config, state, step_fn, batches, mesh, run, schedule=schedule,
                     evaluate_knn=evaluate_knn, preemption=preemption)


def _fit_loop(config: ml_collections.ConfigDict, state: TrainState, step_fn, batches, mesh,
              run: runs.Run, *, schedule: optax.Schedule,
              evaluate_knn: Callable[[TrainState], float], preemption: runs.PreemptionWatch):
  """Run steps `state.step .. config.steps - 1`; returns `(state, train_seconds, images_seen)`.

  Writes a training record {"step", "loss", "grad_norm", "learning_rate", "time", the collapse
  diagnostics "rankme", "rankme_projections", "projection_std" of the step's global batch
  (`monitor.collapse_diagnostics`), and with an online probe "probe_loss", "probe_accuracy"}
  every `log_every` steps and at the end, an evaluation record {"step", "knn_accuracy"} every
  `eval_every` steps (`evaluate_knn(state)`), and a checkpoint every `checkpoint_every` steps
  and at the end. A non-finite step stops the run (FloatingPointError naming the step and
  the last committed checkpoint) or, under on_nonfinite='skip', is reported and dropped.
  `train_seconds` / `images_seen` exclude the first logging interval (it holds compilation).
  """
  start_step = int(state.step)
  label = (config.method.name if config.method.name != "simclr" else objectives.describe(config))
  bar = tqdm(total=config.steps, initial=start_step, disable=not (config.progress and run.is_chief),
             desc=f"{config.name} {label}", unit="step", dynamic_ncols=True)
  last_good = run.manager.latest_step()

  def check_finite(step: int, metrics) -> None:
    """Stop (or warn, under on_nonfinite='skip') if step `step` was not finite."""
    if bool(metrics["finite"]):
      return
    message = (f"non-finite loss, gradients or update at step {step} "
               f"(loss={float(metrics['loss'])}, grad_norm={float(metrics['grad_norm'])}); "
               f"the update was not applied")
    if config.on_nonfinite == "stop":
      ckpt = (f"{run.path}/checkpoints/{last_good}" if last_good is not None else "none")
      bar.close()
      run.manager.wait_until_finished()  # the checkpoint named in the message is committed
      raise FloatingPointError(f"{message}; last good checkpoint: {ckpt}")
    run.say(f"warning: {message}; skipping (on_nonfinite='skip')")

  # A step's `finite` flag is read one step late, after the next step is dispatched, so the
  # host never waits for the device between steps (no per-step round trip); it is read at
  # once before anything that looks at the state (log, evaluation, checkpoint). A
  # non-finite step never changes the state, so the lag cannot let bad values through.
  pending = None
  diagnostics = jax.jit(lambda e: monitor.collapse_diagnostics(e["features"], e["projections"]),
                        out_shardings=parallel.replicated(mesh))
  train_seconds, images_seen, step_start = 0.0, 0, time.time()
  for step in range(start_step, config.steps):
    images, labels = next(batches)
    state, metrics = step_fn(state, *parallel.shard_host_batch((images, labels), mesh))
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
                "grad_norm": float(metrics["grad_norm"]),
                "learning_rate": float(schedule(step)), "time": run.elapsed()}
      record.update({k: float(metrics[k]) for k in ("probe_loss", "probe_accuracy")
                     if k in metrics})
      if "embeddings" in metrics:
        record.update({k: float(v) for k, v in diagnostics(metrics["embeddings"]).items()})
      run.log.write(record)
      bar.set_postfix(loss=f"{record['loss']:.4f}")
      step_start = time.time()
    if config.eval_every and done % config.eval_every == 0 and done != config.steps:
      acc = evaluate_knn(state)
      run.log.write({"step": done, "knn_accuracy": acc})
      run.say(f"step {done}: kNN test accuracy {acc:.4f}")
    if config.checkpoint_every and done % config.checkpoint_every == 0:
      runs.save(run.manager, state)
      last_good = done
    if preemption.reached(done):  # every process at the same step
      if pending is not None:
        check_finite(*pending)
      if last_good != done:  # not just saved as a regular checkpoint
        runs.save(run.manager, state)
      run.manager.wait_until_finished()
      bar.close()
      raise runs.Preempted(done, f"{run.path}/checkpoints/{done}")
    bar.update(1)
  bar.close()
  if run.manager.latest_step() != int(state.step):
    runs.save(run.manager, state)
  run.manager.wait_until_finished()
  return state, train_seconds, images_seen


# ----------------------------------------------------------------------------- the driver


ConfigError = runs.ConfigError


def validate_config(config: ml_collections.ConfigDict):
  """Check every name and number of a config before any data loading or compilation."""
  _checks.choice("data source", config.data.split(":", 1)[0], data.SOURCES)
  _checks.choice("model", config.model, models.MODELS)
  _encoder_options(config)
  compute_dtype(config)
  augment.get(config.augmentation)
  _checks.positive("probe_learning_rate", config.get("probe_learning_rate", 1e-3))
  _checks.choice("method.name", config.method.name, methods.NAMES)
  objectives.make(config)
  optimizer = make_optimizer(config)
  _checks.positive_int("batch_size", config.batch_size)
  _checks.choice("on_nonfinite", config.on_nonfinite, ("stop", "skip"))
  _checks.choice("on_bad_file", config.get("on_bad_file", "skip"), ("skip", "raise"))
  _check_crop_fields(config)
  split = config.get("pretrain_split", "")
  if split and not str(config.data).startswith("tfds:"):
    raise ValueError(f"pretrain_split={split!r} names a TFDS split, but data={config.data!r} "
                     f"is not a tfds:NAME source; leave it empty")
  mesh = parallel.make_mesh(config.num_devices or None)
  parallel.check_global_batch(config.batch_size, mesh)
  return optimizer, mesh


def _check_crop_fields(config: ml_collections.ConfigDict) -> None:
  """image_size, crop_scale, crop_ratio, num_crops, data_workers (absent: the defaults)."""
  for name in ("image_size", "data_workers"):
    value = config.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
  _checks.positive_int("num_crops", config.get("num_crops", 2))
  crops.check_range("crop_scale", tuple(config.get("crop_scale", (0.08, 1.0))), 0.0, 1.0)
  crops.check_range("crop_ratio", tuple(config.get("crop_ratio", (3 / 4, 4 / 3))), 0.0,
                    float("inf"))


def _load_data(config: ml_collections.ConfigDict, dataset: Optional[data.ImageDataset] = None):
  """`data.load` of the config's source (unless a study passes the `dataset` it loaded once);
  its warnings (skipped files) name the user's call."""
  if dataset is not None:
    _check_batch_fits(config, dataset)
    return dataset
  kind = config.data.split(":", 1)[0]
  options = ({"on_bad_file": config.get("on_bad_file", "skip")}
             if kind in ("folder", "imagefolder") else {})
  if kind in ("imagefolder", "tfds") and config.get("image_size", 0):
    options["image_size"] = config.image_size
  if config.get("pretrain_split", ""):
    options["pretrain_split"] = config.pretrain_split
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dataset = data.load(config.data, seed=config.seed, **options)
  for w in caught:  # re-issued at the caller of `pretrain`, not inside contrax
    warnings.warn(w.message, w.category, stacklevel=3)
  _check_batch_fits(config, dataset)
  return dataset


def _check_batch_fits(config: ml_collections.ConfigDict, dataset: data.ImageDataset) -> None:
  if config.batch_size > len(dataset.pretrain):
    raise ValueError(f"batch_size {config.batch_size} is larger than the "
                     f"{len(dataset.pretrain)} training images of {config.data!r}")


def _crop_batches(config: ml_collections.ConfigDict, split: data.LazyImageSplit):
  """The Grain iterator of host-cropped training batches of a variable-size `split`."""
  return loader.crop_batches(
      split, batch_size=config.batch_size, seed=config.seed, num_steps=config.steps,
      image_size=split.image_size, num_crops=config.get("num_crops", 2),
      scale=tuple(config.get("crop_scale", (0.08, 1.0))),
      ratio=tuple(config.get("crop_ratio", (3 / 4, 4 / 3))),
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_workers=config.get("data_workers", 0))


def pretrain(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False,
             overwrite: bool = False, dataset: Optional[data.ImageDataset] = None) -> dict:
  """Contrastive pre-training plus evaluation; writes the run directory and returns the summary.

  Run directory (`contrax.runs`): config.json, metrics.jsonl, loss.png, accuracy.png,
  summary.json (final kNN / linear-probe / nearest-centre accuracies, wall time, image counts),
  checkpoints/. A directory that already holds a run is refused unless `resume` (continue its
  latest checkpoint; its config must match) or `overwrite` (delete it first). Every check a
  user can act on runs before anything is compiled and raises `ConfigError`.
  """
  try:
    optimizer, mesh = validate_config(config)
    dataset = _load_data(config, dataset)
    run = runs.open_run(workdir, config, image_shape=dataset.train.image_shape, resume=resume,
                        overwrite=overwrite)
    model = create_model(config)  # builds the module only: nothing is traced or compiled
    method = create_method(config, model)
    if (isinstance(dataset.pretrain, data.LazyImageSplit)
        and config.get("num_crops", 2) != method.num_views):
      raise ValueError(f"num_crops={config.get('num_crops', 2)} but "
                       f"method.name={config.method.name!r} takes {method.num_views} views")
  except (ValueError, TypeError, OSError) as e:
    raise ConfigError(str(e)) from e

  probe = create_probe(config, dataset.num_classes)
  state = init_state(method, optimizer, jax.random.fold_in(jax.random.key(config.seed), 1),
                     dataset.train.image_shape, probe=probe)
  state = jax.device_put(state, parallel.replicated(mesh))
  batches = None
  if isinstance(dataset.pretrain, data.LazyImageSplit):
    # Images of varying size: Grain cuts `num_crops` crops per image on the host; its
    # iterator state is saved with every checkpoint and restored with the state.
    batches = _crop_batches(config, dataset.pretrain)
    run.attach_data(batches)
  state = run.restore_latest(state)
  start_step = int(state.step)
  run.log.forget_after(start_step)

  def evaluate_knn(state: TrainState) -> float:
    tr = evaluate.extract_features(model, state.variables(), dataset.train)
    te = evaluate.extract_features(model, state.variables(), dataset.test)
    return evaluate.knn(*tr, *te, k=config.knn_k, num_classes=dataset.num_classes)

  if start_step == 0 and config.eval_every:  # the random-init baseline of the kNN curve
    run.log.write({"step": 0, "knn_accuracy": evaluate_knn(state)})
  if batches is None:
    batches = data.prefetch(data.batches(
        dataset.pretrain, batch_size=config.batch_size, seed=config.seed, start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count()))
  state, train_seconds, images_seen = fit(
      config, state, make_train_step(method, optimizer, mesh, seed=config.seed, probe=probe),
      batches,
      mesh, run, schedule=make_schedule(config), evaluate_knn=evaluate_knn)
  batches.close()  # stops the prefetch thread / Grain's worker processes

  results = evaluate.evaluate_all(model, state.variables(), dataset, knn_k=config.knn_k)
  final = {k: results[k] for k in ("knn_accuracy", "linear_accuracy") if k in results}
  run.log.write({"step": int(state.step), **final})
  summary = {
      "data": config.data, "model": config.model, "loss": method.name, "steps": int(state.step),
      **results,
      "images_per_second": images_seen / train_seconds if train_seconds > 0 else None,
      "wall_seconds": run.elapsed(),
      "devices": int(mesh.size),
      "num_pretrain_images": len(dataset.pretrain),
      "num_train_images": len(dataset.train), "num_test_images": len(dataset.test),
      "image_shape": list(dataset.train.image_shape),
  }
  run.finish(summary)
  return summary


# Names kept for the study scripts (the run directory lives in contrax.runs).
checkpoint_manager = runs.checkpoint_manager
read_metrics = runs.read_metrics


def pretrain_once(config: ml_collections.ConfigDict, workdir: str, *,
                  dataset: Optional[data.ImageDataset] = None) -> dict:
  """The summary of `pretrain(config, workdir)`, training only what is not done.

  A finished run of `config` in `workdir` is returned without training (a finished run of
  another config is a ValueError naming the fields); otherwise the run starts, or resumes from
  its last checkpoint. Studies of many runs call this so that re-running one after an
  interruption redoes nothing that finished; `dataset` is the data set the study loaded once.
  """
  summary = runs.finished_summary(config, workdir)
  if summary is not None:
    return summary
  return pretrain(config, workdir, resume=True, dataset=dataset)


def load_trained(workdir: str, *, config: Optional[ml_collections.ConfigDict] = None):
  """`(model, variables)` of the latest checkpoint of the run in `workdir` (any path).

  The model is built from the run's config.json (or from `config` if given); `variables` holds
  'params' and 'batch_stats', ready for `model.apply(variables, x, train=False)`.
  """
  saved, variables = runs.load_variables(workdir)
  return create_model(config if config is not None else saved), variables
