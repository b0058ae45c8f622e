"""A FIFO queue of embeddings in a method's extra state: MoCo's keys, NNCLR's support set.

The queue is a ring buffer `{"queue": [K, D], "ptr": int32}`: each step writes the global
batch's B rows at positions `ptr, ptr + 1, ... (mod K)` and advances `ptr` by B (mod K), so it
always holds the last K rows enqueued, the oldest at `ptr` (`in_fifo_order`). Unlike MoCo's
code (`queue[:, ptr:ptr + B] = keys`, which asserts K % B == 0) the write wraps, so any
B <= K works. Rows are stored L2-normalised; the queue starts as random unit vectors, as in the
official MoCo and NNCLR code (they are negatives, or neighbour candidates, until overwritten).

Every device holds the whole queue (it lives in `TrainState.extra`, replicated) and enqueues
the same all-gathered global batch, so it stays identical across devices and equal to the
single-device run. Sharding it over the data axis (each device K/n rows) would save memory,
K·D·4 bytes per device (32 MiB for MoCo's K = 65536 at D = 128), but not compute (a device's
b queries against all K rows cost b·K·D either way) and would add a collective to the loss (the
queries all-gathered, or the partial log-sum-exps all-reduced); at these sizes the replicated
queue is the simpler exact choice.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from contrax import _checks
from contrax import pairs as pairs_lib

__all__ = ["init", "enqueue", "in_fifo_order"]


def init(key: jax.Array, size: int, dim: int) -> dict:
  """A queue of `size` random unit rows of dimension `dim`, pointer 0."""
  _checks.positive_int("queue size", size)
  rows = jax.random.normal(key, (size, dim), jnp.float32)
  return {"queue": pairs_lib.l2_normalize(rows), "ptr": jnp.zeros((), jnp.int32)}


def enqueue(state: dict, rows: jax.Array) -> dict:
  """`state` with the `[B, D]` `rows` (the global batch, the same on every device) written,
  L2-normalised and without gradient, over its B oldest rows."""
  queue, ptr = state["queue"], state["ptr"]
  size = queue.shape[0]
  if rows.shape[0] > size:
    raise ValueError(f"the queue holds {size} rows, fewer than the global batch of "
                     f"{rows.shape[0]} enqueued each step; use a queue of at least the batch size")
  rows = jax.lax.stop_gradient(pairs_lib.l2_normalize(rows)).astype(queue.dtype)
  index = (ptr + jnp.arange(rows.shape[0])) % size
  return {"queue": queue.at[index].set(rows, unique_indices=True),
          "ptr": ((ptr + rows.shape[0]) % size).astype(jnp.int32)}


def in_fifo_order(state: dict) -> jax.Array:
  """The queue's rows from the oldest to the newest."""
  return jnp.roll(state["queue"], -state["ptr"], axis=0)
