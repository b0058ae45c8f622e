"""Shared benchmark plumbing: timing, process isolation, memory, the optional PyTorch peer, files.

- `time_calls(functions, repeats)`: every zero-argument function called once untimed (tracing,
  compilation, warm-up; skipped with `warmup=False` after an ahead-of-time compile), then `repeats` interleaved rounds (A, B, A, B, ...) so that load on a
  shared machine hits every contender alike; per name the fastest and the median seconds.
  Results are waited for with `jax.block_until_ready` (any pytree; plain values pass through).
- `run_isolated(script, case, env=...)`: `python script --case JSON` in a fresh interpreter with
  extra environment variables (XLA_FLAGS, JAX_PLATFORMS, ...), so that flags that must be set
  before JAX starts apply and each case's peak memory is its own; the child prints one JSON
  record (`worker(measure)` in the script's `__main__`).
- `memory_estimate(compiled)`: XLA's compiled memory analysis (arguments, outputs and
  temporaries of one device's program) of `jax.jit(f).lower(...).compile()`.
- `peak_rss_bytes()`: the process's peak resident set (`getrusage(RUSAGE_SELF).ru_maxrss`).
- `import_torch()`: torch and torchvision if both import, else a "not installed" note for the
  peer columns.
- `write(workdir, config, results, text, summary)`: config.json, results.json, results.md,
  summary.json; prints the text.
- `main(get_config, run)`: the command line (`--config.<field>=VALUE`, `--workdir=DIR`), or the
  child side of `run_isolated`.

Nothing here imports JAX at module level: a benchmark may still set XLA_FLAGS for its children.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Mapping

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # after benchmarks/
import _study  # noqa: E402  (experiments/_study.py: the absl + config_flags command line)

GIB = 2.0**30
MIB = 2.0**20


def time_calls(functions: Mapping[str, Callable[[], Any]], repeats: int, *,
               warmup: bool = True) -> dict[str, dict]:
  """`{name: {"min": s, "median": s}}` over `repeats` interleaved rounds, after one untimed
  call of each (`warmup=False` where the functions were compiled ahead of time)."""
  import jax

  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  for fn in functions.values() if warmup else ():
    jax.block_until_ready(fn())
  times = {name: [] for name in functions}
  for _ in range(repeats):
    for name, fn in functions.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: dict(min=min(t), median=statistics.median(t)) for name, t in times.items()}


def memory_estimate(compiled) -> dict[str, int]:
  """Bytes of one device's arguments, outputs and temporaries, and their total."""
  analysis = compiled.memory_analysis()
  out = dict(argument_bytes=int(analysis.argument_size_in_bytes),
             output_bytes=int(analysis.output_size_in_bytes),
             temp_bytes=int(analysis.temp_size_in_bytes))
  out["total_bytes"] = sum(out.values())
  return out


def peak_rss_bytes() -> int:
  """Peak resident set of this process so far (Linux reports kibibytes)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_isolated(script: str, case: Mapping[str, Any], *, env: Mapping[str, str] = (),
                 timeout: float | None = None) -> dict:
  """The record `worker(measure)` prints for `case` in a fresh `python script`; on failure
  `dict(case, status="failed", error=<stderr tail>)`."""
  proc = subprocess.run([sys.executable, os.path.abspath(script), "--case", json.dumps(case)],
                        capture_output=True, text=True, env={**os.environ, **dict(env)},
                        timeout=timeout)
  if proc.returncode != 0:
    return dict(case, status="failed", error=proc.stderr[-2000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def import_torch():
  """`(torch, torchvision, "")`, or `(None, None, note)` when either is not installed."""
  try:
    import torch
    import torchvision
    import torchvision.models
    import torchvision.transforms.v2
  except ImportError as error:
    return None, None, f"PyTorch peer not installed ({error.name}; pip install -e '.[bench]')"
  return torch, torchvision, ""


def write(workdir: str, config, results, text: str, summary: Mapping[str, Any]) -> dict:
  """config.json, results.json, results.md and summary.json in `workdir`; prints `text`."""
  os.makedirs(workdir, exist_ok=True)
  for name, value in (("config.json", config.to_dict()), ("results.json", results),
                      ("summary.json", dict(summary))):
    with open(os.path.join(workdir, name), "w") as f:
      json.dump(value, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(text + "\n")
  print(text)
  return dict(summary)


def main(get_config, run, measure: Callable[[dict], dict] | None = None) -> None:
  """A benchmark's `__main__`: the child side of `run_isolated` (`--case JSON`: print
  `measure(case)` as JSON), else the command line over `get_config()` and `run`."""
  if measure is not None and len(sys.argv) == 3 and sys.argv[1] == "--case":
    print(json.dumps(measure(json.loads(sys.argv[2]))))
    return
  _study.main(get_config, run)
