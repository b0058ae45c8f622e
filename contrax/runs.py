"""The run directory of a training run, and reading finished runs back.

    <workdir>/config.json     the config, plus the image shape of its data set
    <workdir>/metrics.jsonl   one JSON record a line: training {"step", "loss", "grad_norm",
                              "learning_rate", "time"}, evaluation {"step", "knn_accuracy"} (the
                              record at step 0 is the random-init baseline), and the final
                              {"step", "knn_accuracy", "linear_accuracy"}
    <workdir>/tensorboard/    the same numeric records as TensorBoard scalars (tensorboardX
                              event files: `tensorboard --logdir <workdir>`)
    <workdir>/summary.json    final accuracies, wall time, throughput, image counts
    <workdir>/loss.png, accuracy.png
    <workdir>/checkpoints/    orbax: the whole `TrainState`, written atomically

A directory holds one run. A fresh run into a directory that holds anything is refused
(`--resume` continues it, `--overwrite` replaces it); a resume must use the run's config
(only the fields in `RESUMABLE_FIELDS` may change) and cannot go back before its checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from typing import Any, Optional

import flax
import jax
import ml_collections
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from contrax import plotting

__all__ = [
    "RESUMABLE_FIELDS", "ConfigError", "MetricsLog", "read_metrics", "write_plots",
    "checkpoint_manager", "save", "restore", "Run", "open_run", "finished_summary",
    "load_variables", "dotted_fields", "Preempted", "PreemptionWatch",
]

# Fields a resumed run may change: they set how long the run goes on and what it reports, never
# the result of a step. (`steps` also sets the length of the cosine schedule: a run resumed with
# more steps continues the same parameters on the longer schedule.)
RESUMABLE_FIELDS = frozenset({"steps", "progress", "log_every", "eval_every",
                              "checkpoint_every", "knn_k", "num_devices", "on_nonfinite"})
_DERIVED_FIELDS = ("image_shape",)  # written to config.json by the run, not set by the user


class ConfigError(ValueError):
  """A run that cannot start: a bad config, output directory or data set.

  `contrax.train.pretrain` raises it (with the underlying error as `__cause__`) before anything
  is compiled; the experiment CLI prints it as one `error: ...` line and exits with status 2.
  """


# ----------------------------------------------------------------------------- metrics


class MetricsLog:
  """Appends JSON lines to `path` and the same numbers as TensorBoard scalars to
  `tensorboard_dir` (when `enabled`: process 0 only).

  TensorBoard's event files are written by tensorboardX (no TensorFlow needed); each record's
  numeric fields other than `step` become scalars at that step. A resumed run purges the
  scalars past its checkpoint (TensorBoard's purge_step), as `forget_after` drops the lines.
  """

  def __init__(self, path: str, enabled: bool, tensorboard_dir: Optional[str] = None):
    self.path, self.enabled, self.tensorboard_dir = path, enabled, tensorboard_dir
    self._writer: Any = None  # a tensorboardX SummaryWriter, made on first use
    self._purge_step: Optional[int] = None

  def _tensorboard(self):
    if self._writer is None and self.enabled and self.tensorboard_dir:
      from tensorboardX import SummaryWriter  # imported on first use: it loads protobuf
      # The file name holds the time in whole seconds: a resumed run's writer started in the
      # same second would overwrite the first file, so the suffix adds nanoseconds (it also
      # keeps TensorBoard's name order the order the files were written).
      self._writer = SummaryWriter(self.tensorboard_dir, purge_step=self._purge_step,
                                   flush_secs=10, filename_suffix=f".{time.time_ns()}")
    return self._writer

  def close(self) -> None:
    """Flush and close the TensorBoard writer (the JSON lines are written at once)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def forget_after(self, step: int) -> list[dict]:
    """Drop the records past `step` (a resumed run redoes them); returns the kept records.

    A line torn by a crash mid-write is dropped too: its step is redone.
    """
    kept = []
    if self.enabled and os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except ValueError:
            continue
          if record["step"] <= step:
            kept.append(record)
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    if self.enabled and self.tensorboard_dir and os.path.isdir(self.tensorboard_dir):
      self.close()
      self._purge_step = step + 1  # the next writer tells TensorBoard to drop later scalars
    return kept

  def write(self, record: dict) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
      writer = self._tensorboard()
      if writer is not None:
        for key, value in record.items():
          if (key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)):
            writer.add_scalar(key, value, global_step=int(record["step"]))
        writer.flush()  # records are sparse (every log_every steps): keep the file current


def read_metrics(workdir: str) -> list[dict]:
  """The records of `workdir/metrics.jsonl` ([] if there is none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_plots(workdir: str) -> list[str]:
  """loss.png (training loss vs step) and accuracy.png (kNN test accuracy vs step, the step-0
  baseline and the final linear probe) of the run's metrics records."""
  records = read_metrics(workdir)
  written = []
  for name, figure, key in (("loss.png", plotting.loss_figure, "loss"),
                            ("accuracy.png", plotting.accuracy_figure, "knn_accuracy")):
    if any(key in r for r in records):
      written.append(os.path.join(workdir, name))
      plotting.save(figure(records), written[-1])
  return written


# ----------------------------------------------------------------------------- checkpoints


_STATE_ITEM, _DATA_ITEM = "default", "data"  # "default": what a one-item checkpoint holds


class _DataCheckpointManager(ocp.CheckpointManager):
  """A manager whose checkpoints also hold `data_iterator`'s state (a Grain iterator)."""

  data_iterator: Any = None


def checkpoint_manager(workdir: str, max_to_keep: int = 2, *,
                       data_iterator: Any = None) -> ocp.CheckpointManager:
  """orbax manager under `workdir/checkpoints` (any path, made absolute); writes are
  asynchronous (`save` returns once the state is on the host; `wait_until_finished`, or the
  next save, waits for the write) and atomic (temporary directory, then rename).

  A write cut short by a crash leaves only its temporary directory, which `latest_step` never
  returns and which the next manager on this directory deletes. With `data_iterator` (a
  Grain iterator: `contrax.loader`), every checkpoint also holds its state (item "data",
  one file per process, Grain's orbax handler), beside the state (item "default", which a
  manager without `data_iterator` reads as the whole checkpoint).
  """
  # Asynchronous (orbax's default, set explicitly): `save` copies the state to host memory
  # and returns; a background thread writes it, so the next steps run during the write.
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True,
                                         enable_async_checkpointing=True)
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if data_iterator is None:
    return ocp.CheckpointManager(directory, options=options)
  manager = _DataCheckpointManager(directory, options=options,
                                   item_names=(_STATE_ITEM, _DATA_ITEM))
  manager.data_iterator = data_iterator
  return manager


def save(manager: ocp.CheckpointManager, state) -> None:
  """Save a `TrainState` at its step (asynchronously; `wait_until_finished` commits it), with
  the manager's data iterator state if it has one."""
  args = ocp.args.StandardSave(flax.serialization.to_state_dict(state))
  iterator = getattr(manager, "data_iterator", None)
  if iterator is not None:
    import grain
    args = ocp.args.Composite(**{_STATE_ITEM: args,
                                 _DATA_ITEM: grain.checkpoint.CheckpointSave(iterator)})
  manager.save(int(state.step), args=args, force=True)


def restore(manager: ocp.CheckpointManager, state):
  """The latest checkpoint of `manager`, as a `TrainState` shaped (and sharded) like `state`;
  the manager's data iterator (if any) is set to the state saved with it."""
  step = manager.latest_step()
  target = flax.serialization.to_state_dict(state)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  args = ocp.args.StandardRestore(abstract)
  iterator = getattr(manager, "data_iterator", None)
  if iterator is not None:
    import grain
    restored = manager.restore(step, args=ocp.args.Composite(**{
        _STATE_ITEM: args, _DATA_ITEM: grain.checkpoint.CheckpointRestore(iterator)}))
    restored = restored[_STATE_ITEM]
  else:
    restored = manager.restore(step, args=args)
  return flax.serialization.from_state_dict(state, restored)


# ----------------------------------------------------------------------------- preemption


class Preempted(Exception):
  """A run stopped by a preemption notice (SIGTERM) at a step boundary, its checkpoint at
  `step` committed; `--resume` continues it as if it had never stopped. The CLI exits 0."""

  def __init__(self, step: int, checkpoint: str):
    super().__init__(f"preempted: stopped after step {step}, checkpoint {checkpoint} "
                     "committed; rerun with --resume to continue")
    self.step, self.checkpoint = step, checkpoint


def _jax_preemption_service() -> bool:
  """Whether JAX's preemption sync manager runs here (`jax.distributed` initialised with
  `jax_enable_preemption_service`, the default): it catches SIGTERM itself."""
  # JAX registers its config flags as attributes at runtime (Config._HAS_DYNAMIC_ATTRIBUTES is
  # a pytype marker, which mypy does not read), so the flag is unknown to mypy.
  return bool(jax.distributed.is_initialized()
              and jax.config.jax_enable_preemption_service)  # type: ignore[attr-defined]


class PreemptionWatch:
  """A context that tells the training loop when to stop for a preemption notice (SIGTERM).

  `reached(step)` is called once per step with the number of steps done; when it returns
  True the loop saves a checkpoint at that step boundary and stops.

  - Several processes (`jax.distributed` initialised): JAX's preemption sync point
    (`jax.experimental.multihost_utils.reached_preemption_sync_point`). JAX's runtime catches
    SIGTERM on any process, tells the others through its coordination service, and agrees on
    the step after the largest step any process has reached; every process returns True at
    that same step, so all of them checkpoint the same state. (A Python handler would
    replace JAX's, so none is installed.)
  - One process: a SIGTERM handler (main thread only, restored on exit) records the notice;
    `reached` is True at the next step boundary.
  """

  def __init__(self):
    self._jax = _jax_preemption_service()
    self._notice = False
    self._previous = None

  def __enter__(self) -> "PreemptionWatch":
    if not self._jax and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      if self._previous is None:  # a handler installed outside Python: restore the default
        self._previous = signal.SIG_DFL
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._notice = True

  def reached(self, step: int) -> bool:
    """True if the run should checkpoint and stop after `step` steps (every step calls this)."""
    if self._jax:
      from jax.experimental import multihost_utils
      return bool(multihost_utils.reached_preemption_sync_point(int(step)))
    return self._notice


# ----------------------------------------------------------------------------- a run


def _as_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(json.dumps(config.to_dict()))  # tuples as lists, as config.json holds them


def dotted_fields(config, prefix: str = "") -> dict:
  """Every leaf of a config (a ConfigDict or its `to_dict()`) by dotted name:
  `{"loss": {"temperature": t}}` -> `{"loss.temperature": t}`."""
  out = {}
  for k, v in config.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(dotted_fields(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _differences(saved: dict, wanted: dict, ignore=frozenset()) -> list[str]:
  """The dotted fields on which two configs (as saved in config.json) differ."""
  saved, wanted = dotted_fields(saved), dotted_fields(wanted)
  keys = (saved.keys() | wanted.keys()) - set(_DERIVED_FIELDS) - ignore
  missing = "<missing>"
  return [f"{k}: {saved.get(k, missing)!r} there, {wanted.get(k, missing)!r} here"
          for k in sorted(keys) if saved.get(k, missing) != wanted.get(k, missing)]


def _read_config(workdir: str) -> Optional[dict]:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _sync(name: str) -> None:
  """Wait for every process of a multi-process run (no-op in a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _clear(workdir: str) -> None:
  """Delete `workdir` atomically: renamed to a hidden sibling first, then removed."""
  trash = os.path.join(os.path.dirname(workdir),
                       f".{os.path.basename(workdir)}.deleting-{uuid.uuid4().hex[:8]}")
  os.rename(workdir, trash)
  shutil.rmtree(trash)


class Run:
  """An open run directory: its checkpoint manager, metrics log and clock."""

  def __init__(self, path: str, config: ml_collections.ConfigDict, *, resume: bool):
    self.path, self.config, self.resume = path, config, resume
    self.is_chief = jax.process_index() == 0
    self.manager = checkpoint_manager(path)
    self.log = MetricsLog(os.path.join(path, "metrics.jsonl"), self.is_chief,
                          tensorboard_dir=os.path.join(path, "tensorboard"))
    self._start, self._before = time.time(), 0.0

  def say(self, message: str) -> None:
    """Print a line (process 0 only: every process holds the same replicated values)."""
    if self.is_chief:
      tqdm.write(message)

  def elapsed(self) -> float:
    """Wall seconds of the run, summed over every resumed part."""
    return self._before + time.time() - self._start

  def attach_data(self, iterator) -> None:
    """Save (and on resume, restore) the state of the Grain iterator `iterator` with every
    checkpoint of this run (call before `restore_latest`)."""
    self.manager.close()
    self.manager = checkpoint_manager(self.path, data_iterator=iterator)

  def restore_latest(self, state):
    """`state`, or on resume the latest checkpoint in its shape; drops later metrics records
    and carries over the wall time of the earlier parts."""
    step = self.manager.latest_step()
    if self.resume and step is not None:
      state = restore(self.manager, state)
      self.say(f"resumed {self.path} at step {step}")
    elif self.resume:
      self.say(f"--resume: no checkpoint in {self.path}/checkpoints; starting at step 0")
    kept = self.log.forget_after(int(state.step))
    self._before = max((r["time"] for r in kept if "time" in r), default=0.0)
    return state

  def finish(self, summary: dict) -> None:
    """Write summary.json and the plots (process 0); close the TensorBoard writer."""
    self.log.close()
    if self.is_chief:
      with open(os.path.join(self.path, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
      write_plots(self.path)


def open_run(workdir: str, config: ml_collections.ConfigDict, *, image_shape,
             resume: bool = False, overwrite: bool = False) -> Run:
  """Check `workdir` for this run, prepare it, write config.json; raises ValueError if not.

  A directory holding anything is refused unless `resume` (its config.json must equal `config`
  up to `RESUMABLE_FIELDS`, its latest checkpoint must not be past `config.steps`) or
  `overwrite` (the directory is deleted atomically, then recreated). Nothing is compiled.
  """
  if resume and overwrite:
    raise ValueError("resume and overwrite exclude each other: --resume continues the run in "
                     "the workdir, --overwrite deletes it")
  path = os.path.abspath(workdir)
  try:
    os.makedirs(path, exist_ok=True)
    # A uniquely named probe: every process of a multi-host run checks the same directory.
    with tempfile.TemporaryFile(dir=path) as f:
      f.write(b"ok")
    held = sorted(os.listdir(path))
  except OSError as e:
    raise ValueError(f"workdir {path!r} is not writable: {e}") from None
  if held and not (resume or overwrite):
    raise ValueError(f"workdir {path!r} already holds a run ({', '.join(held[:5])}"
                     f"{', ...' if len(held) > 5 else ''}); pass --resume to continue it, "
                     "--overwrite to replace it, or choose another --workdir")
  if resume:
    saved = _read_config(path)
    if saved is not None:
      differ = _differences(saved, _as_json(config), ignore=RESUMABLE_FIELDS)
      if differ:
        raise ValueError(f"cannot resume {path}: it holds a run of another config ("
                         + "; ".join(differ) + "); use --overwrite or another --workdir")
    step = checkpoint_manager(path).latest_step()
    if step is not None and step > config.steps:
      raise ValueError(f"cannot resume {path}: its checkpoint is at step {step}, past "
                       f"steps={config.steps}; pass steps >= {step}")
  _sync("contrax.runs: workdir checked")
  if jax.process_index() == 0:
    if overwrite and held:
      _clear(path)
      os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump({**config.to_dict(), "image_shape": list(image_shape)}, f, indent=2)
  _sync("contrax.runs: workdir prepared")
  return Run(path, config, resume=resume)


# ----------------------------------------------------------------------------- finished runs


def finished_summary(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict]:
  """The summary.json of a finished run of `config` in `workdir`, or None if it did not finish.

  A finished run of another config raises ValueError naming the fields: it is never silently
  reused (`contrax.train.pretrain_once`).
  """
  summary_path = os.path.join(workdir, "summary.json")
  if not os.path.exists(summary_path):
    return None
  differ = _differences(_read_config(workdir) or {}, _as_json(config))
  if differ:
    raise ValueError(f"{workdir} holds a finished run of another config ("
                     + ", ".join(differ) + "); use another workdir or delete that run")
  with open(summary_path) as f:
    return json.load(f)


def load_variables(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
  """`(config, variables)` of the run in `workdir` (any path): its config.json and the
  'params' and 'batch_stats' of its latest checkpoint, as saved."""
  saved = _read_config(workdir)
  if saved is None:
    raise ValueError(f"{os.path.abspath(workdir)!r} holds no run (no config.json)")
  config = ml_collections.ConfigDict({k: v for k, v in saved.items() if k not in _DERIVED_FIELDS})
  manager = checkpoint_manager(workdir)
  step = manager.latest_step()
  if step is None:
    raise ValueError(f"{os.path.abspath(workdir)!r} holds no checkpoint")
  saved_state = manager.restore(step, args=ocp.args.StandardRestore())
  return config, {"params": saved_state["params"],
                  "batch_stats": saved_state.get("batch_stats") or {}}
