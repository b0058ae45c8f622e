"""Benchmark: NT-Xent forward + backward on CPU — contrax vs optax vs lightly (PyTorch).

B pairs (2B stacked embeddings), D = 128, float32, t = 0.5, gradients with respect to both
views. Implementations:

- `contrax`: `contrax.losses.ntxent` under `jax.jit(jax.value_and_grad(...))` (the dense
  single-device path: one [2B, 2B] matmul forward, one backward, one exp pass);
- `contrax_tiled`: `infonce(..., implementation="tiled")` (memory linear in B);
- `optax`: `optax.losses.ntxent` on the stacked embeddings with pair labels, jitted. Its
  cosine similarity broadcasts a [2B, 2B, D] array (memory and time O(B² D)): before
  running, the compiled program's memory analysis is read and the case is skipped
  ("OOM (est. X GiB)") above `memory_limit_gib`, and above `optax_max_batch` (time);
- `lightly`: `lightly.loss.NTXentLoss` in PyTorch (optional: prints "not installed" when
  torch or lightly is missing). If lightly's package import fails only because torchvision
  is missing or broken (e.g. a CUDA torchvision next to a CPU torch), torchvision is replaced
  by an empty stub: NTXentLoss does not use it.

Each (implementation, B) case runs in a fresh subprocess (so its peak resident memory,
`ru_maxrss`, is its own: inputs, runtime and every buffer), which compiles / warms up, then
times `repeats` runs and reports the fastest; the cases of one B are run `rounds` times in
alternation and the fastest round is kept, which makes the comparison fair on a shared
machine. The loss values of all implementations on the same inputs are compared too.

Command:

    python experiments/benchmarks/losses.py                  # B = 512, 2048, 4096
    python experiments/benchmarks/losses.py --sizes 512 --rounds 1 --repeats 1   # smoke

Writes runs/benchmark_losses/ (or --workdir): config.json, results.json, results.md.

Runtime: 14.5 minutes on the 2-core CPU under a load average of ~20 (other jobs); most of
it is optax at B = 512 and lightly at B = 4096.

Result (2-core Xeon @ 2.8 GHz, load average ~20 from other jobs, so absolute times are
inflated and torch's OpenMP threads suffer most from the oversubscription; fastest of two
interleaved rounds; torch 2.13.0+cpu, lightly 1.6.0 with torchvision stubbed, jax 0.10.2,
optax 0.2.8), ms per forward + backward and peak RSS of the case's process:

| B    | contrax | contrax_tiled | optax                | lightly  | contrax vs lightly |
|------|---------|---------------|----------------------|----------|--------------------|
| 512  | 37      | 49            | 14557 (2.3 GiB)      | 1437     | 39x                |
| 2048 | 1112    | 972           | skipped (est. 16 GiB) | 4584    | 4.1x               |
| 4096 | 3611    | 4788          | OOM (est. 66 GiB)    | 24685    | 6.8x               |

Peak RSS at B = 4096: contrax 0.88 GiB, contrax_tiled 0.47 GiB, lightly 1.32 GiB. Loss values
agree to < 1e-6. Before the single-device fast path (autodiff through a masked logsumexp:
three [2B, 2B] matmuls and two exp passes) contrax took ~1.35x longer than now at B = 2048
and 4096 in interleaved runs.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import ml_collections

GIB = 2.0**30
IMPLEMENTATIONS = ("contrax", "contrax_tiled", "optax", "lightly")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "benchmark_losses"
  c.sizes = (512, 2048, 4096)
  c.dim = 128
  c.temperature = 0.5
  c.implementations = IMPLEMENTATIONS
  c.repeats = 2  # timed runs per case after the warm-up; the fastest is kept
  c.rounds = 2  # alternating passes over the implementations of one B; the fastest is kept
  c.memory_limit_gib = 24.0
  # optax broadcasts [2B, 2B, D]: ~20 s per step at B = 512 here, so ~20 min at B = 2048
  # (16 GiB, XLA's estimate) on a machine shared with other jobs; measured up to this B.
  c.optax_max_batch = 512
  c.max_run_seconds = 30.0  # one run slower than this is not repeated (its time is kept)
  c.case_timeout_seconds = 600.0  # a case still running then is reported as "timeout"
  c.torch_threads = 0  # 0: torch's default (one per core)
  c.seed = 0
  return c


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def inputs(case: dict):
  import numpy as np
  rng = np.random.default_rng(case["seed"])
  shape = (case["batch"], case["dim"])
  return (rng.standard_normal(shape, dtype=np.float32),
          rng.standard_normal(shape, dtype=np.float32))


def time_runs(step, repeats: int, max_run_seconds: float) -> float:
  """Fastest of `repeats` runs (ms), stopping early once a run exceeds `max_run_seconds`."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    best = min(best, time.perf_counter() - start)
    if best > max_run_seconds:
      break
  return best * 1e3


def measure_jax(case: dict) -> dict:
  import jax
  import jax.numpy as jnp

  z1, z2 = (jnp.asarray(z) for z in inputs(case))
  t, b = case["temperature"], case["batch"]
  if case["implementation"] == "optax":
    import optax
    labels = jnp.concatenate([jnp.arange(b), jnp.arange(b)])
    loss = lambda a, c: optax.losses.ntxent(jnp.concatenate([a, c]), labels, temperature=t)
  else:
    from contrax.losses import infonce
    impl = "tiled" if case["implementation"] == "contrax_tiled" else "dense"
    loss = lambda a, c: infonce(a, c, temperature=t, implementation=impl)
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  compiled = step.lower(z1, z2).compile()
  memory = compiled.memory_analysis()
  if memory is not None:
    estimate = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                + memory.temp_size_in_bytes) / GIB
    if estimate > case["memory_limit_gib"]:
      return dict(case, skipped=f"OOM (est. {estimate:.0f} GiB)")
    if case["implementation"] == "optax" and case["batch"] > case["optax_max_batch"]:
      return dict(case, skipped=f"skipped (est. {estimate:.0f} GiB, O(B²D) time)")
  value, _ = jax.block_until_ready(compiled(z1, z2))  # compiled ahead: no compile in here
  ms = time_runs(lambda: jax.block_until_ready(compiled(z1, z2)), case["repeats"],
                 case["max_run_seconds"])
  return dict(case, ms=ms, loss=float(value), peak_rss_gib=peak_rss_gib())


def import_lightly_ntxent():
  """lightly's NTXentLoss, stubbing torchvision if that is the only thing failing."""
  try:
    from lightly.loss import NTXentLoss
    return NTXentLoss, ""
  except ImportError as error:
    if "torchvision" not in str(error) and not isinstance(error, ModuleNotFoundError):
      raise
  except RuntimeError as error:  # a torchvision built for another torch fails at import
    if "torchvision" not in str(error):
      raise
  import importlib.abc
  import importlib.machinery
  import types

  class _Stub(types.ModuleType):
    def __getattr__(self, name):
      if name.startswith("__"):
        raise AttributeError(name)
      return type(name, (), {"__init__": lambda self, *a, **k: None})

  class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
      if fullname.split(".")[0] == "torchvision":
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
      return None

    def create_module(self, spec):
      return _Stub(spec.name)

    def exec_module(self, module):
      module.__path__ = []

  for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "lightly")]:
    del sys.modules[name]
  sys.meta_path.insert(0, _StubFinder())
  from lightly.loss import NTXentLoss
  return NTXentLoss, "torchvision stubbed"


def measure_lightly(case: dict) -> dict:
  try:
    import torch
  except ImportError:
    return dict(case, skipped="not installed")
  try:
    ntxent_cls, note = import_lightly_ntxent()
  except ImportError:
    return dict(case, skipped="not installed")
  if case["torch_threads"] > 0:
    torch.set_num_threads(case["torch_threads"])
  z1, z2 = (torch.from_numpy(z).requires_grad_(True) for z in inputs(case))
  loss_fn = ntxent_cls(temperature=case["temperature"])

  def step():
    z1.grad = z2.grad = None
    value = loss_fn(z1, z2)
    value.backward()
    return value

  value = step()
  ms = time_runs(step, case["repeats"], case["max_run_seconds"])
  return dict(case, ms=ms, loss=float(value), peak_rss_gib=peak_rss_gib(), note=note,
              torch_threads=torch.get_num_threads())


def run_case(case: dict) -> dict:
  """Run one case in a fresh interpreter (own peak memory, no shared caches)."""
  try:
    result = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)],
                            capture_output=True, text=True, timeout=case["case_timeout_seconds"])
  except subprocess.TimeoutExpired:
    return dict(case, skipped=f"timeout (> {case['case_timeout_seconds']:.0f} s)")
  lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
  if result.returncode != 0 or not lines:
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
    return dict(case, skipped=f"failed: {tail[0] if tail else result.returncode}")
  return json.loads(lines[-1])


def best_of(records: list[dict]) -> dict:
  timed = [r for r in records if "ms" in r]
  return min(timed, key=lambda r: r["ms"]) if timed else records[0]


def table(results: dict, config) -> str:
  impls = list(config.implementations)
  head = ["B"] + [f"{i} ms" for i in impls] + [f"{i} peak GiB" for i in impls]
  if "lightly" in impls:
    head += [f"{i} speed-up vs lightly" for i in impls if i != "lightly"]
  head += ["max |loss - contrax|"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for b in config.sizes:
    row = results[str(b)]
    cells = [str(b)]
    cells += [f"{row[i]['ms']:.0f}" if "ms" in row[i] else row[i]["skipped"] for i in impls]
    cells += [f"{row[i]['peak_rss_gib']:.2f}" if "ms" in row[i] else "-" for i in impls]
    if "lightly" in impls:
      lightly = row["lightly"]
      for i in impls:
        if i == "lightly":
          continue
        ok = "ms" in row[i] and "ms" in lightly
        cells.append(f"{lightly['ms'] / row[i]['ms']:.1f}x" if ok else "-")
    ref = row.get("contrax", {}).get("loss")
    diffs = [abs(row[i]["loss"] - ref) for i in impls if "loss" in row[i] and ref is not None]
    cells.append(f"{max(diffs):.1e}" if diffs else "-")
    lines.append("| " + " | ".join(cells) + " |")
  notes = {r.get("note") for row in results.values() for r in row.values() if r.get("note")}
  if notes:
    lines.append("")
    lines.append("lightly: " + "; ".join(sorted(notes)))
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2)
  results = {}
  for b in config.sizes:
    records = {i: [] for i in config.implementations}
    for _ in range(config.rounds):
      for impl in config.implementations:
        if records[impl] and "skipped" in records[impl][-1]:
          continue
        case = dict(implementation=impl, batch=b, dim=config.dim,
                    temperature=config.temperature, repeats=config.repeats,
                    memory_limit_gib=config.memory_limit_gib,
                    max_run_seconds=config.max_run_seconds,
                    optax_max_batch=config.optax_max_batch,
                    case_timeout_seconds=config.case_timeout_seconds,
                    torch_threads=config.torch_threads, seed=config.seed)
        record = run_case(case)
        records[impl].append(record)
        print(f"B={b} {impl}: " + (f"{record['ms']:.0f} ms" if "ms" in record
                                   else record["skipped"]), flush=True)
    results[str(b)] = {i: best_of(r) for i, r in records.items()}
  text = table(results, config)
  print(text)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(text + "\n")
  return results


def main(argv=None) -> dict:
  from contrax import config as config_lib
  config, args = config_lib.parse(get_config(), argv, description=__doc__)
  for impl in config.implementations:
    if impl not in IMPLEMENTATIONS:
      raise ValueError(f"unknown implementation {impl!r}; valid: {', '.join(IMPLEMENTATIONS)}")
  return run(config, args.workdir or os.path.join("runs", config.name))


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "--worker":
    worker_case = json.loads(sys.argv[2])
    measure = measure_lightly if worker_case["implementation"] == "lightly" else measure_jax
    print(json.dumps(measure(worker_case)), flush=True)
  else:
    main()
