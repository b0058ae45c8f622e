"""Two processes × four CPU devices through `jax.distributed` equal one process on one device.

The test starts two worker processes (tests/_multiprocess_worker.py) on localhost with a free
port, CPU devices and gloo collectives; they train three steps, each loading its own half of
every global batch, checkpoint and restore through orbax, and process 0 writes the result.
The reference is the same run in this process on a single device. The slow test launches
the main job's CLI (`experiments/pretrain.py --distributed`) the same way. Processes are
killed on failure or timeout.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import _multiprocess_worker as worker
from contrax import parallel, runs, train
from test_parallel import assert_close

NUM_PROCESSES = 2
LOCAL_DEVICES = 4
TIMEOUT_SECONDS = 480  # generous for CI running two slow tests at once on 2 cores; about 20 s
                       # on an idle 2-core CPU
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


def worker_command(process_id: int, port: int, out_dir) -> list[str]:
  return [sys.executable, os.path.join(REPO, "tests", "_multiprocess_worker.py"),
          "--port", str(port), "--process_id", str(process_id),
          "--num_processes", str(NUM_PROCESSES), "--local_devices", str(LOCAL_DEVICES),
          "--out", str(out_dir)]


def run_processes(out_dir, commands: list[list[str]], envs: list[dict], *,
                  timeout: float = TIMEOUT_SECONDS) -> None:
  """Start one process per command, wait for all (killing them all on a failure or timeout),
  and raise with the tail of each log unless all exit with status 0."""
  log_paths = [os.path.join(out_dir, f"process{i}.log") for i in range(len(commands))]
  procs = []
  try:
    for command, env, path in zip(commands, envs, log_paths):
      with open(path, "w") as log:
        procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      cwd=REPO))
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline \
        and all(p.poll() in (None, 0) for p in procs):
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  codes = [p.returncode for p in procs]
  if codes != [0] * len(procs):
    tails = []
    for i, path in enumerate(log_paths):
      with open(path) as log:
        tails.append(f"--- process {i} (exit {codes[i]}):\n" + "".join(log.readlines()[-25:]))
    raise AssertionError(f"processes failed, or were killed after {timeout} s:\n"
                         + "\n".join(tails))


def test_two_processes_match_one_device(tmp_path):
  port, env = free_port(), worker_env()
  run_processes(tmp_path, [worker_command(i, port, tmp_path) for i in range(NUM_PROCESSES)],
                [env] * NUM_PROCESSES)
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
def test_every_method_on_two_processes_equals_one_device(tmp_path):
  """BYOL, SimSiam, MoCo v3 / v2, NNCLR, SwAV, DINO and the VICReg and Barlow Twins losses,
  each 3 steps on 2 processes x 4 devices (each process loading its half of every batch),
  end in the state of the same steps on one device: parameters, momentum targets, queues,
  prototypes, DINO's centre, BatchNorm statistics. About 2 minutes on 2 cores."""
  port, env = free_port(), worker_env()
  cases = ",".join(worker.METHOD_CASES)
  run_processes(tmp_path, [worker_command(i, port, tmp_path) + ["--methods", cases]
                           for i in range(NUM_PROCESSES)], [env] * NUM_PROCESSES,
                timeout=600)
  result = np.load(tmp_path / "methods.npz")
  compared = 0
  for case in worker.METHOD_CASES:
    reference = worker.leaves(worker.run_method_steps(case, parallel.make_mesh(1), 0, 1))
    steps = worker.METHOD_STEPS.get(case, worker.STEPS)
    assert int(result[f"{case}_0"]) == steps, case  # TrainState.step comes first
    for i, ref in enumerate(reference):
      # assert_close's test, plus an absolute 1e-6: a leaf whose exact gradient is 0 (the
      # projector's output bias, which the next BatchNorm cancels) holds only the rounding
      # noise of its sums (~1e-7 after 3 steps), which differs with their order.
      scale = np.max(np.abs(ref)) if ref.size else 0.0
      np.testing.assert_allclose(result[f"{case}_{i}"], ref, rtol=1e-5,
                                 atol=1e-5 * scale + 1e-6, err_msg=f"{case}, leaf {i}: 2 "
                                 f"processes x {LOCAL_DEVICES} devices vs 1 device")
    compared += len(reference)
  assert compared == len(result.files)


# A few steps of the main job (digits, MLP, NT-Xent) with logs, evaluation and checkpoints.
PRETRAIN_FLAGS = dict(steps=4, batch_size=32, log_every=2, eval_every=2, checkpoint_every=2,
                      progress=False, knn_k=5)


@pytest.mark.slow
def test_pretrain_cli_on_two_processes_equals_one_process(tmp_path):
  """The launch of the README: `experiments/pretrain.py --distributed` on every process with
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID / JAX_NUM_CPU_DEVICES set.
  Process 0 alone writes the logs (each record once), orbax checkpoints the global state, and
  the final state equals a one-process run of `train.pretrain` on as many devices."""
  port, run = free_port(), tmp_path / "run"
  command = [sys.executable, os.path.join(REPO, "experiments", "pretrain.py"), "--distributed",
             "--workdir", str(run)]
  command += [f"--config.{k}={str(v).lower()}" for k, v in PRETRAIN_FLAGS.items()]
  envs = [dict(worker_env(), JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES=str(NUM_PROCESSES), JAX_PROCESS_ID=str(i),
               JAX_NUM_CPU_DEVICES=str(LOCAL_DEVICES)) for i in range(NUM_PROCESSES)]
  run_processes(tmp_path, [command] * NUM_PROCESSES, envs)
  logs = [(tmp_path / f"process{i}.log").read_text() for i in range(NUM_PROCESSES)]
  assert "step 2: kNN test accuracy" in logs[0]
  assert "run directory" in logs[0]
  assert all("kNN test accuracy" not in log and "run directory" not in log
             for log in logs[1:])  # the chief alone reports
  records = runs.read_metrics(str(run))
  keys = [(r["step"], tuple(sorted(r))) for r in records]
  # kNN at steps 0 (the baseline), 2 and 4, loss at steps 2 and 4, each written once
  assert len(keys) == len(set(keys)) == 5
  assert {"config.json", "summary.json", "loss.png", "accuracy.png"} <= set(os.listdir(run))
  with open(run / "summary.json") as f:
    assert json.load(f)["devices"] == NUM_PROCESSES * LOCAL_DEVICES
  config = train.default_config()
  config.update(PRETRAIN_FLAGS, num_devices=NUM_PROCESSES * LOCAL_DEVICES)
  train.pretrain(config, str(tmp_path / "reference"))
  two, one = (runs.checkpoint_manager(str(d)) for d in (run, tmp_path / "reference"))
  assert two.latest_step() == one.latest_step() == config.steps
  b = one.restore(config.steps)
  # A checkpoint written by 2 processes restores here, on another topology, given a target.
  a = two.restore(config.steps, args=ocp.args.StandardRestore(
      jax.tree.map(ocp.utils.to_shape_dtype_struct, b)))
  for x, y in zip(worker.leaves(a), worker.leaves(b)):
    assert_close(x, y, "pretrain state: 2 processes vs 1")


PREEMPT_FLAGS = dict(steps=8, batch_size=32, log_every=1, eval_every=0, checkpoint_every=100,
                     progress=False, knn_k=5, compute_dtype="bfloat16")


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_checkpoints_both_at_one_step_and_resume_matches(
    tmp_path):
  """Preemption on a pod, in bf16: SIGTERM reaches process 1 alone while it is paused after
  step 2 (tests/_fault_run.py). JAX's preemption service tells process 0, both agree on one
  step boundary (JAX's preemption sync point), write one checkpoint there (no regular
  checkpoint falls before step 8) and exit 0; `--resume` on two processes then ends equal to
  an uninterrupted one-process run on as many devices."""
  port, run, go = free_port(), tmp_path / "run", tmp_path / "go"
  command = [sys.executable, os.path.join(REPO, "tests", "_fault_run.py"), "--distributed",
             "--workdir", str(run)]
  command += [f"--config.{k}={str(v).lower()}" for k, v in PREEMPT_FLAGS.items()]

  def envs(port, **extra_for_1):
    return [dict(worker_env(), JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                 JAX_NUM_PROCESSES=str(NUM_PROCESSES), JAX_PROCESS_ID=str(i),
                 JAX_NUM_CPU_DEVICES=str(LOCAL_DEVICES), CONTRAX_SKIP_FINAL_EVAL="1",
                 **(extra_for_1 if i == 1 else {})) for i in range(NUM_PROCESSES)]

  procs = []
  try:
    for i, env in enumerate(envs(port, CONTRAX_PAUSE_AT_STEP="2", CONTRAX_GO_FILE=str(go))):
      procs.append(subprocess.Popen(command, env=env, cwd=REPO, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    line = ""
    while procs[1].poll() is None and "PAUSED AT STEP 2" not in line:
      line = procs[1].stdout.readline()
    assert "PAUSED AT STEP 2" in line, "process 1 ended before its pause"
    os.kill(procs[1].pid, signal.SIGTERM)
    go.touch()
    outputs = [p.communicate(timeout=2 * TIMEOUT_SECONDS)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  codes = [p.returncode for p in procs]
  assert codes == [0, 0], "\n".join(f"--- process {i} (exit {c}):\n{o[-3000:]}"
                                    for i, (c, o) in enumerate(zip(codes, outputs)))
  step = runs.checkpoint_manager(str(run)).latest_step()
  assert step is not None and 2 < step < PREEMPT_FLAGS["steps"], step
  assert f"preempted: stopped after step {step}" in outputs[0]
  assert not os.path.exists(run / "summary.json")

  resume = [*command, "--resume"]
  run_processes(tmp_path, [resume] * NUM_PROCESSES, envs(free_port()),
                timeout=2 * TIMEOUT_SECONDS)
  config = train.default_config()
  config.update(PREEMPT_FLAGS, num_devices=NUM_PROCESSES * LOCAL_DEVICES)
  train.pretrain(config, str(tmp_path / "reference"))
  two, one = (runs.checkpoint_manager(str(d)) for d in (run, tmp_path / "reference"))
  assert two.latest_step() == one.latest_step() == config.steps
  b = one.restore(config.steps)
  a = two.restore(config.steps, args=ocp.args.StandardRestore(
      jax.tree.map(ocp.utils.to_shape_dtype_struct, b)))
  for x, y in zip(worker.leaves(a), worker.leaves(b)):
    assert_close(x, y, "bf16 pretrain state: 2 processes preempted and resumed vs 1 process")
