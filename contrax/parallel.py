"""Device meshes and batch sharding: one code path from one CPU device to a pod.

A single device is a mesh of size 1. The training step runs under `jax.shard_map` over the
data axis; every loss takes `axis_name=DATA_AXIS` to score local rows against global columns.
"""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all by default) with axis `data`."""
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  if isinstance(num_devices, bool) or not isinstance(num_devices, (int, np.integer)) \
      or not 1 <= num_devices <= len(devices):
    raise ValueError(f"num_devices must be an integer in [1, {len(devices)}] (the devices JAX "
                     f"sees: {len(devices)}), got {num_devices!r}")
  return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the data axis (checked before compiling)."""
  n = mesh.shape[DATA_AXIS]
  if global_batch_size % n:
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the {n} devices of the "
                     f"'{DATA_AXIS}' mesh axis; use a multiple of {n}")


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_host_batch(local_batch, mesh: Mesh):
  """Place this process's slice of the global batch on the mesh (leading axis sharded)."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)
