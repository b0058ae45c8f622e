"""Benchmark: the cost of one training step of every method, relative to SimCLR's.

Every registered method (`contrax.methods.NAMES`) is built by `train.create_method` from the
same config (encoder, projection dimension, batch, augmentation; each method's own
hyper-parameters at their defaults) and its step is `train.make_train_step` — the code path
`train.pretrain` runs — compiled ahead of time and timed interleaved with the others
(`_harness.time_calls`: one round calls every method once, so load on a shared machine hits
all alike). Reported per method: median and fastest milliseconds per step, the median relative
to SimCLR's, images per second, compile seconds, and XLA's memory estimate of the compiled
step. Methods with multi-crop process more (and smaller) views per image than two-view
methods: the table says how many views each step computes.

Commands:

    python experiments/benchmarks/method_steps.py                   # convnet, 32 px, B = 256
    python experiments/benchmarks/method_steps.py --config.model=mlp --config.data_shape=8,8,1 \\
        --config.batch_size=64 --config.steps=3                     # a smoke run (seconds)

Writes runs/method_steps/ (or --workdir): config.json, results.json, results.md, summary.json.
"""
from __future__ import annotations

import platform
import time

import _harness
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  from contrax import train
  c = train.default_config()
  c.name = "method_steps"
  c.model = "convnet"
  c.augmentation = "simclr"
  c.projection_dim = 128
  c.batch_size = 256
  c.data_shape = (32, 32, 3)
  c.num_devices = 1
  c.steps = 10  # timed rounds (each calls every method's step once)
  c.methods = ""  # comma-separated; "" = every registered method
  return c


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  import jax
  import numpy as np

  from contrax import methods, parallel, train

  names = [m.strip() for m in config.methods.split(",") if m.strip()] or list(methods.NAMES)
  if "simclr" not in names:
    names.insert(0, "simclr")
  mesh = parallel.make_mesh(config.num_devices or None)
  images = np.random.default_rng(config.seed).integers(
      0, 256, (config.batch_size, *config.data_shape), dtype=np.uint8)
  steps, states, rows = {}, {}, {}
  for name in names:
    run_config = ml_collections.ConfigDict(config.to_dict())
    run_config.method.name = name
    model = train.create_model(run_config)
    method = train.create_method(run_config, model)
    optimizer = train.make_optimizer(run_config)
    state = jax.device_put(train.init_state(method, optimizer, jax.random.key(config.seed),
                                            tuple(config.data_shape)),
                           parallel.replicated(mesh))
    step = train.make_train_step(method, optimizer, mesh, seed=config.seed)
    batch = parallel.shard_host_batch(images, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    states[name] = state
    rows[name] = dict(method=name, views=method.num_views, compile_seconds=compile_seconds,
                      **_harness.memory_estimate(compiled))

    def one_step(name=name, compiled=compiled, batch=batch):
      states[name], metrics = compiled(states[name], batch)
      return metrics

    steps[name] = one_step
  times = _harness.time_calls(steps, config.steps)
  base = times["simclr"]["median"]
  for name in names:
    rows[name].update(median_ms=1e3 * times[name]["median"], min_ms=1e3 * times[name]["min"],
                      relative=times[name]["median"] / base,
                      images_per_second=config.batch_size / times[name]["median"])
  header = (f"{config.model}, {tuple(config.data_shape)} images, batch {config.batch_size}, "
            f"{mesh.size} device(s) ({jax.devices()[0].platform}: {platform.processor() or platform.machine()}), "
            f"median of {config.steps} interleaved rounds; jax {jax.__version__}")
  lines = [header, "", "| method | views | ms / step (median) | fastest | × SimCLR | images/s | "
           "compile s | XLA memory MiB |", "|---|---|---|---|---|---|---|---|"]
  for r in rows.values():
    lines.append(f"| {r['method']} | {r['views']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                 f"{r['relative']:.2f} | {r['images_per_second']:.0f} | "
                 f"{r['compile_seconds']:.1f} | {r['total_bytes'] / _harness.MIB:.0f} |")
  return _harness.write(workdir, config, list(rows.values()), "\n".join(lines),
                        dict(relative={n: rows[n]["relative"] for n in names}))


if __name__ == "__main__":
  _harness.main(get_config, run)
