"""One CLI convention for every experiment: an `ml_collections.ConfigDict` plus flags.

Each leaf of the config becomes a flag `--a.b value` (or `--a.b=value`), parsed to the leaf's
type; tuples take comma-separated values. `--workdir DIR` and `--resume` are common to all,
and so is `--distributed`: join a multi-process run (`contrax.parallel.initialize_distributed`:
auto-detected on TPU pods, Slurm and Open MPI; elsewhere from the environment variables
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) before anything else runs.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
from typing import Any, Sequence

import ml_collections


def _leaves(config: ml_collections.ConfigDict, prefix: str = ""):
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, name + ".")
    else:
      yield name, value


def _parse_value(text: str, default: Any, name: str):
  if isinstance(default, bool):
    lowered = text.lower()
    if lowered in ("1", "true", "yes"):
      return True
    if lowered in ("0", "false", "no"):
      return False
    raise ValueError(f"--{name} takes true/false, got {text!r}")
  if isinstance(default, (tuple, list)):
    items = [t for t in text.split(",") if t.strip()]
    kind = type(default[0]) if default else str
    return tuple(_parse_value(t.strip(), kind(), name) if kind is not str else t.strip()
                 for t in items)
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"--{name} takes an integer, got {text!r}") from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"--{name} takes a number, got {text!r}") from None
  if default is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  return text


def parse(config: ml_collections.ConfigDict, argv: Sequence[str] | None = None,
          description: str = "") -> tuple[ml_collections.ConfigDict, argparse.Namespace]:
  """Override `config` from command-line flags; returns (config, namespace with workdir/resume)."""
  parser = argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default=None, help="run directory (default: runs/<name>)")
  parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint")
  parser.add_argument("--distributed", action="store_true",
                      help="join a multi-process run: auto-detected on TPU pods, Slurm, Open MPI; "
                           "elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                           "JAX_PROCESS_ID (and JAX_NUM_CPU_DEVICES on CPU)")
  defaults = dict(_leaves(config))
  for name, value in defaults.items():
    parser.add_argument(f"--{name}", dest=name, default=None, metavar="VALUE",
                        help=f"default: {value!r}")
  args = parser.parse_args(argv)
  config = ml_collections.ConfigDict(config.to_dict())
  for name, default in defaults.items():
    text = getattr(args, name)
    if text is None:
      continue
    value = _parse_value(text, default, name)
    node = config
    *parents, leaf = name.split(".")
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = value
  if args.distributed:
    from contrax import parallel  # imports JAX; joining must precede any JAX computation
    parallel.initialize_distributed()
  return config, args


def run_script(get_config, run, argv: Sequence[str] | None = None, description: str = ""):
  """An experiment's `main`: flags over `get_config()`, then `run(config, workdir)`.

  The workdir is `--workdir`, or `runs/<config.name>`.
  """
  config, args = parse(get_config(), argv, description=description)
  return run(config, args.workdir or os.path.join("runs", config.name))


def write_summary(workdir: str, summary: dict, text: str) -> dict:
  """Write `summary.json` to `workdir`, print the results `text`, return `summary`."""
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(text)
  return summary
