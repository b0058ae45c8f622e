"""Benchmark: dense vs tiled exact InfoNCE, forward + backward, time and peak memory vs N.

N is the number of stacked embeddings (2B: both views), D = 128, float32, NT-Xent (t = 0.5).
Each (implementation, N) case runs in a fresh Python subprocess that builds the inputs,
compiles `jax.jit(jax.value_and_grad(loss))`, runs it `repeats` times and reports the
fastest run (`_harness.time_calls`, the compile excluded) and the process's peak resident set (`getrusage(RUSAGE_SELF).ru_maxrss`: inputs,
gradients, the JAX runtime and every buffer XLA allocated). Before running a dense case the
worker reads the compiled program's memory analysis (arguments + outputs + temporaries);
when that exceeds `memory_limit_gib` it prints "OOM (est. X GiB)" instead of running.

Commands:

    python experiments/benchmarks/tiled_loss.py                      # N = 2^13 .. 2^16
    python experiments/benchmarks/tiled_loss.py --config.log2_sizes=13,14,15,16,17,18 \\
        --config.repeats=1                                           # full range

Writes runs/tiled_loss/ (or --workdir): config.json, results.json, results.md (the table),
memory_vs_n.png, time_vs_n.png, summary.json.

Runtime on the 2-core CPU (shared with other jobs, so timings are preliminary): the default
range takes about 10 minutes; the full range (one timed run) adds N = 2^17 (~8 min) and
N = 2^18 (~30-40 min:
forward + backward is ~4·(2^18)²·128 ≈ 3.5e13 multiply-adds of tiles). Results: README.md.
"""
from __future__ import annotations

import os
import time

import _harness
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "tiled_loss"
  c.log2_sizes = (13, 14, 15, 16)
  c.dim = 128
  c.tile_size = 2048
  c.temperature = 0.5
  c.implementations = ("dense", "tiled")
  c.repeats = 2  # timed runs per case after the compile; the fastest is reported
  c.memory_limit_gib = 24.0
  c.seed = 0
  return c


def measure(case: dict) -> dict:
  """Run one case in this (fresh) process; returns a JSON-able record."""
  import jax
  import jax.numpy as jnp

  from contrax.losses.infonce import infonce

  n, dim = case["n"], case["dim"]
  kwargs = dict(temperature=case["temperature"], implementation=case["implementation"])
  if case["implementation"] == "tiled":
    kwargs["tile_size"] = case["tile_size"]
  k1, k2 = jax.random.split(jax.random.key(case["seed"]))
  z1 = jax.random.normal(k1, (n // 2, dim), jnp.float32)
  z2 = jax.random.normal(k2, (n // 2, dim), jnp.float32)
  step = jax.jit(jax.value_and_grad(lambda a, b: infonce(a, b, **kwargs), (0, 1)))
  record = dict(case)
  start = time.perf_counter()
  compiled = step.lower(z1, z2).compile()
  record["compile_seconds"] = time.perf_counter() - start
  estimate = _harness.memory_estimate(compiled)["total_bytes"] / _harness.GIB
  record["xla_estimate_gib"] = estimate
  if estimate > case["memory_limit_gib"]:
    record["status"] = "oom"
    return record
  seconds = _harness.time_calls({"step": lambda: compiled(z1, z2)}, case["repeats"],
                                warmup=False)["step"]
  loss, grads = compiled(z1, z2)
  record.update(status="ok", seconds=seconds["min"], runs=case["repeats"], loss=float(loss),
                grad_norm=float(jnp.sqrt(sum(jnp.sum(g**2) for g in grads))),
                peak_rss_gib=_harness.peak_rss_bytes() / _harness.GIB)
  return record


def cell(record: dict, key: str, fmt: str) -> str:
  if record["status"] == "oom":
    return f"OOM (est. {record['xla_estimate_gib']:.0f} GiB)"
  if record["status"] != "ok":
    return "failed"
  return fmt.format(record[key])


def table(records: list[dict], implementations) -> str:
  by_key = {(r["implementation"], r["n"]): r for r in records}
  sizes = sorted({r["n"] for r in records})
  head = ["N"] + [f"{impl} {what}" for impl in implementations
                  for what in ("time (s)", "peak RSS (GiB)")]
  if set(implementations) == {"dense", "tiled"}:
    head += ["tiled / dense time", "loss rel. diff"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for n in sizes:
    row = [f"2^{n.bit_length() - 1} = {n}"]
    for impl in implementations:
      r = by_key[(impl, n)]
      row += [cell(r, "seconds", "{:.2f}"), cell(r, "peak_rss_gib", "{:.2f}")]
    if set(implementations) == {"dense", "tiled"}:
      d, t = by_key[("dense", n)], by_key[("tiled", n)]
      both = d["status"] == t["status"] == "ok"
      row.append(f"{t['seconds'] / d['seconds']:.2f}" if both else "–")
      row.append(f"{abs(t['loss'] - d['loss']) / abs(d['loss']):.1e}" if both else "–")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def plots(records: list[dict], workdir: str) -> None:
  from contrax.plotting import line_plot

  memory, seconds = {}, {}
  for impl in sorted({r["implementation"] for r in records}):
    ok = sorted((r for r in records if r["implementation"] == impl and r["status"] == "ok"),
                key=lambda r: r["n"])
    memory[f"{impl} (measured)"] = ([r["n"] for r in ok], [r["peak_rss_gib"] for r in ok])
    seconds[impl] = ([r["n"] for r in ok], [r["seconds"] for r in ok])
    oom = sorted((r for r in records if r["implementation"] == impl and r["status"] == "oom"),
                 key=lambda r: r["n"])
    if oom:
      memory[f"{impl} (XLA estimate, not run)"] = ([r["n"] for r in oom],
                                                   [r["xla_estimate_gib"] for r in oom])
  line_plot(os.path.join(workdir, "memory_vs_n.png"), memory, xlabel="N (embeddings)",
            ylabel="peak memory (GiB)", title="InfoNCE forward + backward, D = 128",
            logx=True, logy=True, markers=True)
  line_plot(os.path.join(workdir, "time_vs_n.png"), seconds, xlabel="N (embeddings)",
            ylabel="seconds", title="InfoNCE forward + backward, D = 128 (2-core CPU)",
            logx=True, logy=True, markers=True)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  records = []
  for log2_n in config.log2_sizes:
    for impl in config.implementations:
      case = dict(implementation=impl, n=2**log2_n, dim=config.dim, tile_size=config.tile_size,
                  temperature=config.temperature, repeats=config.repeats,
                  memory_limit_gib=config.memory_limit_gib, seed=config.seed)
      # a fresh process per case, so each peak resident set is the case's own
      records.append(_harness.run_isolated(__file__, case, env={"JAX_PLATFORMS": "cpu"}))
      print({k: v for k, v in records[-1].items() if k != "error"}, flush=True)
      if records[-1]["status"] == "failed":
        print(records[-1]["error"])
  os.makedirs(workdir, exist_ok=True)
  plots(records, workdir)
  tiled = [r for r in records if r["implementation"] == "tiled" and r["status"] == "ok"]
  summary = {
      "largest_tiled_n": max((r["n"] for r in tiled), default=None),
      "largest_tiled_peak_rss_gib": max(tiled, key=lambda r: r["n"])["peak_rss_gib"]
                                    if tiled else None,
  }
  return _harness.write(workdir, config, records, table(records, config.implementations), summary)


if __name__ == "__main__":
  _harness.main(get_config, run, measure)
