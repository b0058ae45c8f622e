"""Two processes × four CPU devices through `jax.distributed` equal one process on one device.

The test starts two worker processes (tests/_multiprocess_worker.py) on localhost with a free
port, CPU devices and gloo collectives; they train three steps, each loading its own half of
every global batch, checkpoint and restore through orbax, and process 0 writes the result.
The reference is the same run in this process on a single device. The workers are killed on
failure or timeout.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import _multiprocess_worker as worker
from contrax import parallel, train
from test_parallel import assert_close

NUM_PROCESSES = 2
LOCAL_DEVICES = 4
TIMEOUT_SECONDS = 240  # generous for a loaded CI machine; about 20 s on an idle 2-core CPU
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def worker_env() -> dict:
  """This environment without the 8-virtual-device flag (each worker asks for 4 devices)."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "JAX_NUM_CPU_DEVICES"):
    env.pop(name, None)
  return env


def run_workers(out_dir, *extra_args: str) -> None:
  """Start the workers, wait for both (killing them on a failure or timeout), check exits."""
  port, env = free_port(), worker_env()
  log_paths = [os.path.join(out_dir, f"worker{i}.log") for i in range(NUM_PROCESSES)]
  procs = []
  try:
    for i, path in enumerate(log_paths):
      with open(path, "w") as log:
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "_multiprocess_worker.py"),
             "--port", str(port), "--process_id", str(i), "--num_processes", str(NUM_PROCESSES),
             "--local_devices", str(LOCAL_DEVICES), "--out", str(out_dir), *extra_args],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline \
        and all(p.poll() in (None, 0) for p in procs):
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  codes = [p.returncode for p in procs]
  if codes != [0] * NUM_PROCESSES:
    tails = []
    for i, path in enumerate(log_paths):
      with open(path) as log:
        tails.append(f"--- worker {i} (exit {codes[i]}):\n" + "".join(log.readlines()[-25:]))
    raise AssertionError(f"workers failed, or were killed after {TIMEOUT_SECONDS} s:\n"
                         + "\n".join(tails))


def test_two_processes_match_one_device(tmp_path):
  run_workers(tmp_path)
  result = np.load(tmp_path / "result.npz")
  assert int(result["num_devices"]) == NUM_PROCESSES * LOCAL_DEVICES
  reference = worker.leaves(worker.run_steps(parallel.make_mesh(1), 0, 1))
  final = [result[f"final_{i}"] for i in range(len(reference))]
  restored = [result[f"restored_{i}"] for i in range(len(reference))]
  assert len(result.files) == 2 * len(reference) + 1
  assert int(final[0]) == worker.STEPS  # TrainState.step comes first
  for i, (a, r, ref) in enumerate(zip(final, restored, reference)):
    assert_close(a, ref, f"leaf {i}: 2 processes x {LOCAL_DEVICES} devices vs 1 device")
    np.testing.assert_array_equal(r, a, err_msg=f"leaf {i}: orbax restore")


@pytest.mark.slow
def test_pretrain_as_two_processes_equals_one_process(tmp_path):
  """`train.pretrain` unchanged on 2 processes: process 0 alone writes the logs (each record
  once), orbax checkpoints the global state, and the final state equals a one-process run on
  the same number of devices."""
  run_workers(tmp_path, "--pretrain")
  run = tmp_path / "run"
  records = train.read_metrics(str(run))
  keys = [(r["step"], tuple(sorted(r))) for r in records]
  assert len(keys) == len(set(keys)) == 4  # loss and kNN at steps 2 and 4, written once
  assert {"config.json", "summary.json", "loss.png", "accuracy.png"} <= set(os.listdir(run))
  config = worker.pretrain_config()
  config.num_devices = NUM_PROCESSES * LOCAL_DEVICES
  train.pretrain(config, str(tmp_path / "reference"))
  two, one = (train.checkpoint_manager(str(d)) for d in (run, tmp_path / "reference"))
  assert two.latest_step() == one.latest_step() == config.steps
  b = one.restore(config.steps)
  # A checkpoint written by 2 processes restores here, on another topology, given a target.
  a = two.restore(config.steps, args=ocp.args.StandardRestore(
      jax.tree.map(ocp.utils.to_shape_dtype_struct, b)))
  for x, y in zip(worker.leaves(a), worker.leaves(b)):
    assert_close(x, y, "pretrain state: 2 processes vs 1")
