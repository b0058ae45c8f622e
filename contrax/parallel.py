"""Device meshes, batch sharding and multi-host start-up: one code path from one CPU device
to a pod.

A single device is a mesh of size 1. The training step runs under `jax.shard_map` over the
data axis `DATA_AXIS`; every loss takes `axis_name=DATA_AXIS` to score its local rows against
the all-gathered global columns, and returns the global mean (identical on every device), so
`jax.grad` inside the step gives the full, device-summed gradient of replicated parameters.

Processes: each of the `P` processes (one per host on a pod) owns the contiguous block
`[p·n/P, (p+1)·n/P)` of the data axis's `n` devices and feeds the matching contiguous slice
of the global batch (`contrax.data.batches(..., process_index=p, process_count=P)`;
`shard_host_batch` places it). Start-up: `initialize_distributed` before any JAX computation
(see its docstring for the flags on TPU pods, GPU hosts and CPU processes on one machine).
Everything else, the training code included, is the same for 1 device, 8 devices and a pod.
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from contrax import _checks

__all__ = [
    "AXIS_TYPE", "DATA_AXIS", "MODEL_AXIS", "CPU_COLLECTIVES", "make_mesh", "check_mesh",
    "data_axis_size",
    "check_global_batch", "data_sharding", "replicated", "shard_host_batch", "is_chief",
    "initialize_distributed",
]

# Axis types are given explicitly (jax.make_mesh's default became Explicit in JAX 0.7). Auto:
# the training step is one `jax.shard_map` over the whole mesh (every axis manual inside), and
# under `jax.jit` a shard_map on Auto axes reshards its inputs to its `in_specs` as needed (a
# host array, a state replicated by `device_put`); on Explicit axes it rejects any input whose
# sharding type differs from `in_specs` (e.g. an unsharded array for P('data'): "in_specs ...
# does not match the specs of the input"), so every caller of a sharded loss would have to
# place its inputs first. The step passes its mesh to `jax.shard_map(mesh=...)`, so no ambient
# mesh (`jax.set_mesh`) is needed.
AXIS_TYPE = AxisType.Auto
DATA_AXIS = "data"
MODEL_AXIS = "model"  # reserved for model parallelism; the step today shards data only
CPU_COLLECTIVES = ("gloo", "mpi")


def _process_blocks(devices: Sequence[Any]) -> dict[int, list]:
  blocks: dict[int, list] = {}
  for d in devices:
    blocks.setdefault(d.process_index, []).append(d)
  return blocks


def make_mesh(num_devices: Optional[int] = None, *, model_axis_size: int = 1) -> Mesh:
  """A mesh over `num_devices` devices (all by default) with data axis `data`.

  Built by `jax.make_mesh` (device order chosen for the physical topology) with the axis
  types given explicitly, `AXIS_TYPE` (Auto); where that order would split a process's block of the
  data axis, the devices are kept in process order instead.

  With several processes, each process contributes its first `num_devices / process_count`
  local devices, in process order (the layout `check_mesh` requires). With
  `model_axis_size = m > 1` the mesh is 2-D, axes `('data', 'model')` of sizes
  `(num_devices / m, m)`: the training step shards the batch over `data` and replicates
  over `model` (the room left for model parallelism).
  """
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  if isinstance(num_devices, (bool, np.bool_)) or not isinstance(num_devices, (int, np.integer)) \
      or not 1 <= num_devices <= len(devices):
    raise ValueError(f"num_devices must be an integer in [1, {len(devices)}] (the devices JAX "
                     f"sees: {len(devices)}), got {num_devices!r}")
  model_axis_size = _checks.positive_int("model_axis_size", model_axis_size)
  if num_devices % model_axis_size:
    raise ValueError(f"model_axis_size {model_axis_size} must divide num_devices {num_devices}")
  blocks = _process_blocks(devices)
  if num_devices % len(blocks):
    raise ValueError(f"num_devices must be a multiple of the {len(blocks)} processes (each feeds "
                     f"the same number of devices), got {num_devices}")
  per_process = num_devices // len(blocks)
  chosen = [d for p in sorted(blocks) for d in blocks[p][:per_process]]
  shape: tuple[int, ...] = (num_devices,)
  names: tuple[str, ...] = (DATA_AXIS,)
  if model_axis_size > 1:
    shape, names = (num_devices // model_axis_size, model_axis_size), (DATA_AXIS, MODEL_AXIS)
  axis_types = (AXIS_TYPE,) * len(shape)
  try:  # jax.make_mesh orders the devices for the physical topology (e.g. a TPU ring) ...
    return check_mesh(jax.make_mesh(shape, names, axis_types=axis_types, devices=chosen))
  except ValueError:  # ... unless that splits a process's block (or spans TPU slices)
    return Mesh(np.asarray(chosen).reshape(shape), names, axis_types=axis_types)


def check_mesh(mesh: Mesh) -> Mesh:
  """Check, before any compilation, that `mesh` can run the data-parallel step here.

  It must be a `jax.sharding.Mesh` with a `data` axis, built from devices of this JAX
  runtime, and with several processes each process's devices must be the contiguous block
  `p` of the data axis (the slice of the global batch that process `p` loads), the same
  number for every process.
  """
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh (e.g. contrax.parallel.make_mesh()), got "
                    f"{type(mesh).__name__}")
  if DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"mesh must have a '{DATA_AXIS}' axis, got axes {mesh.axis_names}")
  known = {(d.platform, d.id) for d in jax.devices()}
  foreign = [d for d in mesh.devices.flat if (d.platform, d.id) not in known]
  if foreign:
    raise ValueError(f"mesh holds devices this JAX runtime does not have: {foreign[:4]}; JAX "
                     f"sees {jax.device_count()} {jax.devices()[0].platform} devices")
  # Process of each position along the data axis (over the other axes, must be one process).
  by_data = np.moveaxis(mesh.devices, mesh.axis_names.index(DATA_AXIS), 0)
  by_data = by_data.reshape(by_data.shape[0], -1)
  owners = [sorted({d.process_index for d in row}) for row in by_data]
  if any(len(o) > 1 for o in owners):
    raise ValueError("each position of the mesh's data axis must hold devices of one process")
  owners = [o[0] for o in owners]
  processes = sorted(set(owners))
  n = len(owners)
  if n % len(processes) or owners != [p for p in processes for _ in range(n // len(processes))]:
    raise ValueError(f"the '{DATA_AXIS}' axis must hold each process's devices as one contiguous "
                     f"block, equal for all processes, in process order (process p feeds slice p "
                     f"of the global batch); got processes {owners} along the axis. Build the "
                     f"mesh with contrax.parallel.make_mesh")
  if jax.process_count() > 1 and processes != list(range(jax.process_count())):
    raise ValueError(f"the mesh must include devices of all {jax.process_count()} processes "
                     f"(every process feeds its slice of the batch), got processes {processes}")
  return mesh


def data_axis_size(mesh: Mesh) -> int:
  return int(mesh.shape[DATA_AXIS])


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the data axis (checked before compiling)."""
  n = data_axis_size(mesh)
  if isinstance(global_batch_size, (bool, np.bool_)) or \
      not isinstance(global_batch_size, (int, np.integer)) or global_batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {global_batch_size!r}")
  if global_batch_size % n:
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the {n} devices of the "
                     f"'{DATA_AXIS}' mesh axis; use a multiple of {n}")


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over `data` (replicated over any other mesh axis)."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_host_batch(local_batch, mesh: Mesh):
  """Place this process's slice of the global batch on the mesh (leading axis sharded).

  `local_batch` is a pytree of host arrays with `global_batch / process_count` rows each;
  the result is a pytree of global `jax.Array`s of `global_batch` rows, sharded over the data
  axis. One process: the whole batch.
  """
  local_devices = data_axis_size(mesh) // jax.process_count()

  def place(x):
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] % local_devices:
      raise ValueError(f"each process's batch must have a leading axis divisible by its "
                       f"{local_devices} devices on the '{DATA_AXIS}' axis, got shape {x.shape}")
    return jax.make_array_from_process_local_data(data_sharding(mesh), x)
  return jax.tree.map(place, local_batch)


def is_chief() -> bool:
  """True on process 0, the one that writes logs, plots and summaries."""
  return jax.process_index() == 0


_ADDRESS = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:(\d+)$")


def _env_int(name: str) -> Optional[int]:
  text = os.environ.get(name)
  if text is None or not text.strip():
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Union[int, Sequence[int]]] = None, *,
                           num_cpu_devices: Optional[int] = None, cpu_collectives: str = "gloo",
                           initialization_timeout: int = 300) -> None:
  """Join a multi-process JAX run (`jax.distributed.initialize`); call before any JAX work.

  Every process runs the same program; afterwards `jax.devices()` lists the devices of all
  processes, `make_mesh()` spans them, and the training code is unchanged.

  - TPU pod (and Slurm, Open MPI clusters): `initialize_distributed()` with no argument on
    every host; JAX detects the coordinator, the process count and this process's id.
  - GPU hosts: `initialize_distributed("host0:1234", num_processes=H, process_id=h)` on host
    h (every local GPU is used; `local_device_ids` restricts them, e.g. one GPU per process).
  - CPU processes on one machine (testing): `initialize_distributed("localhost:1234",
    num_processes=2, process_id=i, num_cpu_devices=4)`; cross-process collectives on CPU
    go through gloo (`cpu_collectives`, set as `jax_cpu_collectives_implementation`; "mpi"
    needs an MPI launcher).

  Unset arguments fall back to the environment variables `JAX_COORDINATOR_ADDRESS`,
  `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` and `JAX_LOCAL_DEVICE_IDS` (comma separated), so a
  launcher can configure an unchanged script; `JAX_NUM_CPU_DEVICES` is JAX's own flag.

  Args:
    coordinator_address: `host:port` of process 0's coordinator service (all processes give
      the same; on several hosts not `localhost`).
    num_processes: number of processes P.
    process_id: this process's id in [0, P).
    local_device_ids: local devices this process uses (default: all).
    num_cpu_devices: CPU devices per process (sets `jax_num_cpu_devices`).
    cpu_collectives: "gloo" or "mpi".
    initialization_timeout: seconds to wait for all processes to connect.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None:
    num_processes = _env_int("JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int("JAX_PROCESS_ID")
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  missing = [name for name, value in explicit.items() if value is None]
  if 0 < len(missing) < 3:
    raise ValueError(f"give coordinator_address, num_processes and process_id together (or none, "
                     f"for auto-detection on TPU pods, Slurm, Open MPI); missing: "
                     f"{', '.join(missing)}")
  if not missing:
    address = (_ADDRESS.match(coordinator_address) if isinstance(coordinator_address, str)
               else None)
    if address is None or not 0 < int(address.group(1)) < 65536:
      raise ValueError(f"coordinator_address must be 'host:port' with a port in [1, 65535], got "
                       f"{coordinator_address!r}")
    num_processes = _checks.positive_int("num_processes", num_processes)
    if isinstance(process_id, (bool, np.bool_)) or not isinstance(process_id, (int, np.integer)) \
        or not 0 <= process_id < num_processes:
      raise ValueError(f"process_id must be an integer in [0, num_processes={num_processes}), got "
                       f"{process_id!r}")
    process_id = int(process_id)
  _checks.choice("cpu_collectives", cpu_collectives, CPU_COLLECTIVES)
  _checks.positive_int("initialization_timeout", initialization_timeout)
  if num_cpu_devices is not None:
    jax.config.update("jax_num_cpu_devices", _checks.positive_int("num_cpu_devices",
                                                                  num_cpu_devices))
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids,
                               initialization_timeout=initialization_timeout)
  except ValueError as e:
    if missing:
      raise ValueError(f"no cluster detected for automatic set-up ({e}); outside TPU pods, Slurm "
                       f"and Open MPI pass coordinator_address, num_processes and process_id "
                       f"(or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)"
                       ) from None
    raise
