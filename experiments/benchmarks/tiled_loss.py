"""Benchmark: dense vs tiled exact InfoNCE, forward + backward, time and peak memory vs N.

N is the number of stacked embeddings (2B: both views), D = 128, float32, NT-Xent (t = 0.5).
Each (implementation, N) case runs in a fresh Python subprocess that builds the inputs,
compiles `jax.jit(jax.value_and_grad(loss))`, runs it `repeats` times and reports the
fastest run and the process's peak resident set (`getrusage(RUSAGE_SELF).ru_maxrss`: inputs,
gradients, the JAX runtime and every buffer XLA allocated). Before running a dense case the
worker reads the compiled program's memory analysis (arguments + outputs + temporaries);
when that exceeds `memory_limit_gib` it prints "OOM (est. X GiB)" instead of running.

Commands:

    python experiments/benchmarks/tiled_loss.py                      # N = 2^13 .. 2^16
    python experiments/benchmarks/tiled_loss.py --log2_sizes 13,14,15,16,17,18   # full range

Writes runs/tiled_loss/ (or --workdir): config.json, results.json, results.md (the table),
memory_vs_n.png, time_vs_n.png, summary.json.

Runtime on the 2-core CPU (shared with other jobs, so timings are preliminary): the default
range takes about 10 minutes; the full range adds N = 2^17 (~8 min) and N = 2^18 (~30-40 min:
forward + backward is ~4·(2^18)²·128 ≈ 3.5e13 multiply-adds of tiles). Results: README.md.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import ml_collections

from contrax import config as config_lib  # no JAX import: safe before XLA_FLAGS are set

GIB = 2.0**30


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "tiled_loss"
  c.log2_sizes = (13, 14, 15, 16)
  c.dim = 128
  c.tile_size = 2048
  c.temperature = 0.5
  c.implementations = ("dense", "tiled")
  c.repeats = 2  # timed runs per case after the compile; the fastest is reported
  c.max_repeat_seconds = 60.0  # stop repeating once one run takes longer than this
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
  analysis = compiled.memory_analysis()
  estimate = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
              + analysis.temp_size_in_bytes) / GIB
  record["xla_estimate_gib"] = estimate
  if estimate > case["memory_limit_gib"]:
    record["status"] = "oom"
    return record
  seconds = []
  for _ in range(case["repeats"]):
    start = time.perf_counter()
    loss, grads = jax.block_until_ready(compiled(z1, z2))
    seconds.append(time.perf_counter() - start)
    if seconds[-1] > case["max_repeat_seconds"]:
      break
  record.update(status="ok", seconds=min(seconds), runs=len(seconds), loss=float(loss),
                grad_norm=float(jnp.sqrt(sum(jnp.sum(g**2) for g in grads))),
                peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB)
  return record


def run_case(case: dict) -> dict:
  """`measure(case)` in a fresh subprocess, so each peak resident set is the case's own."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(case)],
                        capture_output=True, text=True, env=env)
  if proc.returncode != 0:
    return dict(case, status="failed", error=proc.stderr[-2000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


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
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2)
  records = []
  for log2_n in config.log2_sizes:
    for impl in config.implementations:
      case = dict(implementation=impl, n=2**log2_n, dim=config.dim, tile_size=config.tile_size,
                  temperature=config.temperature, repeats=config.repeats,
                  max_repeat_seconds=config.max_repeat_seconds,
                  memory_limit_gib=config.memory_limit_gib, seed=config.seed)
      record = run_case(case)
      records.append(record)
      print(json.dumps({k: v for k, v in record.items() if k != "error"}), flush=True)
      if record["status"] == "failed":
        print(record["error"], file=sys.stderr)
      with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(records, f, indent=2)
  text = table(records, config.implementations)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(text + "\n")
  plots(records, workdir)
  tiled = [r for r in records if r["implementation"] == "tiled" and r["status"] == "ok"]
  summary = {
      "largest_tiled_n": max((r["n"] for r in tiled), default=None),
      "largest_tiled_peak_rss_gib": max(tiled, key=lambda r: r["n"])["peak_rss_gib"]
                                    if tiled else None,
  }
  return config_lib.write_summary(workdir, summary, text)


def main(argv=None) -> dict:
  return config_lib.run_script(get_config, run, argv, description=__doc__)


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "--worker":
    print(json.dumps(measure(json.loads(sys.argv[2]))))
  else:
    main(sys.argv[1:])
