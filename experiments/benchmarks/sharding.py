"""Benchmark: global negatives on 8 devices — the local × global slab vs the naive global × global.

NT-Xent (t = 0.5) forward + backward under `jax.shard_map` over 8 virtual CPU devices, global
batch B (N = 2B stacked embeddings, D = 128, float32), each device holding b = B/8 images:

- `slab` (contrax): `infonce(z1, z2, axis_name='data')`: each device all-gathers the
  embeddings and scores its 2b local rows against the 2B global columns, a `[2b, 2B]` slab;
  the loss is psum'd to the global mean.
- `naive`: each device all-gathers the embeddings and computes the whole `[2B, 2B]` loss
  itself (`pmean` of the identical per-device losses gives the right gradients): n times the
  work and memory of the slab.
- `tiled` (contrax): `infonce(..., implementation='tiled', axis_name='data')`: the columns
  travel around a ring of devices in tiles; memory linear in B.

Per-device memory is XLA's compiled memory analysis of the SPMD program (one device's
arguments, outputs and temporaries: `jax.jit(...).lower(...).compile().memory_analysis()`);
the analytic size of one similarity matrix (`[2b, 2B]` or `[2B, 2B]` float32) is given next to
it. Step time is the fastest of `repeats` runs after compilation. Every case runs in a fresh
Python with `XLA_FLAGS=--xla_force_host_platform_device_count=<num_devices>`
(`_harness.run_isolated`). All 8 virtual devices share
the host's cores, so the naive version's redundant work shows up in full in the time; on real
accelerators it costs the same factor n in FLOPs per device. Cases whose estimated memory
(8 devices) exceeds `memory_limit_gib` are not run. The loss of every implementation is
compared with the slab's.

Command:

    python experiments/benchmarks/sharding.py                   # B = 256, 1024, 2048
    python experiments/benchmarks/sharding.py --config.batch_sizes=256 --config.repeats=1

Writes runs/sharding/ (or --workdir): config.json, results.json, results.md (the table),
summary.json.

Runtime: 60 s on the 2-core Intel Xeon, lightly loaded.
Result (jax 0.10.2, 8 virtual CPU devices; per device: arguments + outputs + temporaries of
the compiled program, temporaries in brackets):

| global B (N = 2B) | slab [2b, 2B] | naive [2B, 2B] | slab ms | slab MiB/dev | naive ms | naive MiB/dev | tiled ms | tiled MiB/dev |
|---|---|---|---|---|---|---|---|---|
| 256 (512)   | 0.12 MiB | 1 MiB  | 3.6   | 0.6 (0.6)   | 14.0  | 2.1 (2.0)   | 10.4  | 0.3 (0.3) |
| 1024 (2048) | 2 MiB    | 16 MiB | 29.8  | 3.5 (3.3)   | 190.3 | 23.3 (23.1) | 49.1  | 1.6 (1.4) |
| 2048 (4096) | 8 MiB    | 64 MiB | 113.5 | 11.0 (10.5) | 739.6 | 29.1 (28.6) | 111.4 | 3.3 (2.8) |

The naive version takes 6.5x the slab's time at B = 2048 (n = 8 times its work); losses agree
to 2.3e-7 relative. Both run the NT-Xent kernel, which sweeps its rows in blocks of at most
2^21 numbers and never holds a whole similarity matrix, so at B = 2048 neither holds the
analytic matrix size: the naive version's memory is its blocks of `[2B, 2B]` (2.6x the slab's).
The tiled ring holds tiles of `[2b, 2b]` and is the smallest.
"""
from __future__ import annotations

import time

import _harness
import ml_collections

MIB = _harness.MIB


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "sharding"
  c.num_devices = 8
  c.batch_sizes = (256, 1024, 2048)
  c.dim = 128
  c.temperature = 0.5
  c.tile_size = 256
  c.implementations = ("slab", "naive", "tiled")
  c.repeats = 3
  c.memory_limit_gib = 8.0
  c.seed = 0
  return c


def loss_fn(implementation: str, config: ml_collections.ConfigDict, axis: str):
  """The per-device loss `(z1_local, z2_local) -> global NT-Xent` of `implementation`."""
  import jax

  from contrax import pairs as pairs_lib
  from contrax.losses.infonce import infonce

  t = config.temperature
  if implementation == "slab":
    return lambda a, b: infonce(a, b, temperature=t, axis_name=axis)
  if implementation == "tiled":
    return lambda a, b: infonce(a, b, temperature=t, axis_name=axis, implementation="tiled",
                                tile_size=config.tile_size)
  if implementation == "naive":
    def naive(a, b):
      full = infonce(pairs_lib.all_gather_rows(a, axis), pairs_lib.all_gather_rows(b, axis),
                     temperature=t)
      return jax.lax.pmean(full, axis)
    return naive
  raise ValueError(f"unknown implementation {implementation!r}; valid: slab, naive, tiled")


def measure(case: dict) -> dict:
  """One (implementation, batch) on `num_devices` devices, in a fresh process (see `run`)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from contrax import parallel

  config = ml_collections.ConfigDict(case["config"])
  implementation, batch = case["implementation"], case["batch"]
  if jax.device_count() < config.num_devices:
    raise ValueError(f"num_devices {config.num_devices} > the {jax.device_count()} devices JAX "
                     "sees")
  mesh = parallel.make_mesh(config.num_devices)
  n = parallel.data_axis_size(mesh)
  parallel.check_global_batch(batch, mesh)
  spec = P(parallel.DATA_AXIS)
  loss = loss_fn(implementation, config, parallel.DATA_AXIS)
  step = jax.jit(jax.shard_map(jax.value_and_grad(loss, (0, 1)), mesh=mesh,
                               in_specs=(spec, spec), out_specs=(P(), (spec, spec))))
  k1, k2 = jax.random.split(jax.random.key(config.seed))
  put = lambda z: jax.device_put(z, NamedSharding(mesh, spec))  # noqa: E731
  z1 = put(jax.random.normal(k1, (batch, config.dim), jnp.float32))
  z2 = put(jax.random.normal(k2, (batch, config.dim), jnp.float32))
  start = time.perf_counter()
  compiled = step.lower(z1, z2).compile()
  record = dict(implementation=implementation, batch=batch, devices=n,
                compile_seconds=time.perf_counter() - start)
  memory = _harness.memory_estimate(compiled)
  per_device = memory["total_bytes"]
  record.update(temp_mib=memory["temp_bytes"] / MIB, per_device_mib=per_device / MIB)
  if per_device * n / _harness.GIB > config.memory_limit_gib:
    record["status"] = "skipped"
    return record
  seconds = _harness.time_calls({"step": lambda: compiled(z1, z2)}, config.repeats,
                                warmup=False)["step"]
  value, _ = compiled(z1, z2)
  record.update(status="ok", seconds=seconds["min"], loss=float(value))
  return record


def table(records: list[dict], implementations) -> str:
  by_key = {(r["implementation"], r["batch"]): r for r in records}
  head = ["global B (N = 2B)", "slab [2b, 2B] MiB", "naive [2B, 2B] MiB"]
  for impl in implementations:
    head += [f"{impl}: ms / step", f"{impl}: MiB / device (temp)"]
  head += ["naive / slab memory", "naive / slab time", "max loss rel. diff"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for batch in sorted({r["batch"] for r in records}):
    n = next(r["devices"] for r in records)
    row = [f"{batch} ({2 * batch})", f"{2 * batch // n * 2 * batch * 4 / MIB:.2f}",
           f"{(2 * batch) ** 2 * 4 / MIB:.2f}"]
    for impl in implementations:
      r = by_key[(impl, batch)]
      time_cell = f"{1e3 * r['seconds']:.1f}" if r["status"] == "ok" else r["status"]
      row += [time_cell, f"{r['per_device_mib']:.1f} ({r['temp_mib']:.1f})"]
    slab, naive = by_key.get(("slab", batch)), by_key.get(("naive", batch))
    if slab and naive:
      row.append(f"{naive['per_device_mib'] / slab['per_device_mib']:.1f}x")
      ok = slab["status"] == naive["status"] == "ok"
      row.append(f"{naive['seconds'] / slab['seconds']:.1f}x" if ok else "–")
    else:
      row += ["–", "–"]
    losses = [by_key[(i, batch)]["loss"] for i in implementations
              if by_key[(i, batch)]["status"] == "ok"]
    ref = slab["loss"] if slab and slab["status"] == "ok" else None
    row.append(f"{max(abs(x - ref) / abs(ref) for x in losses):.1e}" if ref else "–")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={config.num_devices}",
         "JAX_PLATFORMS": "cpu"}
  records = []
  for batch in config.batch_sizes:
    for impl in config.implementations:
      case = dict(implementation=impl, batch=batch, config=config.to_dict())
      record = _harness.run_isolated(__file__, case, env=env)
      if record["status"] == "failed":
        raise RuntimeError(f"{impl} at B = {batch} failed:\n{record['error']}")
      records.append(record)
      print(record, flush=True)
  largest = max(config.batch_sizes)
  by_key = {(r["implementation"], r["batch"]): r for r in records}
  summary = {"largest_batch": largest, "devices": config.num_devices,
             **{f"{impl}_per_device_mib": by_key[(impl, largest)]["per_device_mib"]
                for impl in config.implementations}}
  return _harness.write(workdir, config, records, table(records, config.implementations),
                        summary)


if __name__ == "__main__":
  _harness.main(get_config, run, measure)
