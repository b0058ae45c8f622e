"""Run `experiments/pretrain.py` as a subprocess with injected faults (for tests/test_reliability.py).

    python tests/_fault_run.py [pretrain flags...]

The command line is the CLI's, unchanged; the faults are chosen by environment variables:

  CONTRAX_KILL_AFTER_STEP=k   SIGKILL this process (no cleanup, no flush: a crash) right after
                              the metrics record of step k is written, once at least one
                              checkpoint is committed (its directory renamed to its step number).
  CONTRAX_HANG_IN_SAVE_AT=s   at the checkpoint of step s, start an orbax save padded with a
                              large random array (so the write takes a while), print
                              "CHECKPOINT WRITE IN FLIGHT" and block: the test kills the process
                              while orbax is still writing to its temporary directory.
  CONTRAX_PAUSE_AT_STEP=k     right after the metrics record of step k is written, print
                              "PAUSED AT STEP k" and wait (up to 10 minutes) until the file
                              CONTRAX_GO_FILE exists: the test sends its signal (a SIGTERM:
                              preemption) while the run is known to be at step k.
  CONTRAX_SLOW_SAVE_AT=s      like CONTRAX_HANG_IN_SAVE_AT, but the padded save is orbax's
                              asynchronous one and returns at once: training goes on while the
                              write is in flight ("ASYNC CHECKPOINT WRITE STARTED" is printed).
  CONTRAX_SKIP_FINAL_EVAL=1   replace the final evaluation (kNN / linear probe, which reads but
                              never changes the parameters) by a stub, to keep the tests short.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from contrax import evaluate, runs  # noqa: E402

PADDING_FLOATS = 48 * 2**20  # 192 MiB of float32 noise: orbax needs a while to write it


def committed_steps(checkpoint_dir: str) -> list[int]:
  """Steps whose orbax directory is committed (renamed from its temporary name)."""
  if not os.path.isdir(checkpoint_dir):
    return []
  return sorted(int(n) for n in os.listdir(checkpoint_dir) if n.isdigit())


def kill_after_step(kill_step: int) -> None:
  original = runs.MetricsLog.write

  def write(self, record):
    original(self, record)
    if record.get("step") == kill_step and "loss" in record:
      checkpoints = os.path.join(os.path.dirname(self.path), "checkpoints")
      deadline = time.time() + 120
      while not committed_steps(checkpoints) and time.time() < deadline:
        time.sleep(0.01)
      os.kill(os.getpid(), signal.SIGKILL)

  runs.MetricsLog.write = write


def pause_at_step(pause_step: int, go_file: str) -> None:
  original = runs.MetricsLog.write

  def write(self, record):
    original(self, record)
    if record.get("step") == pause_step and "loss" in record:
      print(f"PAUSED AT STEP {pause_step}", flush=True)
      deadline = time.time() + 600
      while not os.path.exists(go_file) and time.time() < deadline:
        time.sleep(0.01)  # Python signal handlers run between these sleeps

  runs.MetricsLog.write = write


def hang_in_save(hang_step: int) -> None:
  original = runs.save

  def save(manager, state):
    if int(state.step) != hang_step:
      return original(manager, state)
    padded = flax.serialization.to_state_dict(state)
    padded["padding"] = np.random.default_rng(0).standard_normal(PADDING_FLOATS, np.float32)
    manager.save(hang_step, args=ocp.args.StandardSave(padded), force=True)
    print("CHECKPOINT WRITE IN FLIGHT", flush=True)
    time.sleep(3600)

  runs.save = save


def slow_save(slow_step: int) -> None:
  original = runs.save

  def save(manager, state):
    if int(state.step) != slow_step:
      return original(manager, state)
    padded = flax.serialization.to_state_dict(state)
    padded["padding"] = np.random.default_rng(0).standard_normal(PADDING_FLOATS, np.float32)
    manager.save(slow_step, args=ocp.args.StandardSave(padded), force=True)
    print("ASYNC CHECKPOINT WRITE STARTED", flush=True)

  runs.save = save


def main() -> None:
  if "CONTRAX_KILL_AFTER_STEP" in os.environ:
    kill_after_step(int(os.environ["CONTRAX_KILL_AFTER_STEP"]))
  if "CONTRAX_PAUSE_AT_STEP" in os.environ:
    pause_at_step(int(os.environ["CONTRAX_PAUSE_AT_STEP"]), os.environ["CONTRAX_GO_FILE"])
  if "CONTRAX_SLOW_SAVE_AT" in os.environ:
    slow_save(int(os.environ["CONTRAX_SLOW_SAVE_AT"]))
  if "CONTRAX_HANG_IN_SAVE_AT" in os.environ:
    hang_in_save(int(os.environ["CONTRAX_HANG_IN_SAVE_AT"]))
  if os.environ.get("CONTRAX_SKIP_FINAL_EVAL") == "1":
    evaluate.evaluate_all = lambda *args, **kwargs: {"knn_accuracy": -1.0}
  sys.argv = [os.path.join(ROOT, "experiments", "pretrain.py")] + sys.argv[1:]
  runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
  main()
