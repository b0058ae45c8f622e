"""The main job: SimCLR-style contrastive pre-training, then kNN / linear-probe evaluation.

Command (the README's first command; defaults: digits, MLP encoder, NT-Xent):

    python experiments/pretrain.py

A named config (digits, cifar10, imagenet, stl10) and any field of it as a flag, e.g. the
CPU-scale CIFAR recipe, shorter, or on an image folder of your own, or photos of every size
(ImageNet layout, cropped to --config.image_size on the host):

    python experiments/pretrain.py --config cifar10 --config.steps=2000
    python experiments/pretrain.py --config cifar10 --config.data=folder:PATH
    python experiments/pretrain.py --config imagenet --config.data=imagefolder:PATH

Writes runs/NAME/ (or --workdir): config.json, metrics.jsonl, loss.png, accuracy.png,
summary.json, checkpoints/. A workdir that already holds a run is refused: --resume continues
it from its latest checkpoint (same config; more steps allowed), --overwrite replaces it.

A bad flag, config, output directory or data set prints one `error: ...` line and exits with
status 2 before anything is compiled; a run stopped by a non-finite loss or update
(--config.on_nonfinite=stop) prints the step and the last good checkpoint and exits with
status 1. A preemption notice (SIGTERM; with several processes, JAX's preemption sync point)
finishes the current step, checkpoints it on every process and exits with status 0: rerun
with --resume. Runtime and result of the default command on a 2-core CPU: see README.md.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from contrax import runs, train

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "pretrain.py")
_spec = importlib.util.spec_from_file_location("pretrain_configs", CONFIG_FILE)
configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(configs)


def define_flags() -> None:
  """--config (the named config, with a --config.FIELD flag per field), --workdir, --resume,
  --overwrite, --distributed."""
  config_flags.DEFINE_config_file(
      "config", CONFIG_FILE,
      "the named config: " + ", ".join(configs.CONFIGS) + " (default: digits); any field is "
      "overridden by --config.FIELD=VALUE (tuples as 8,16). Fields of the default config:\n"
      + configs.describe(configs.get_config()), lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory (default: runs/<config.name>)")
  flags.DEFINE_bool("resume", False, "continue the run in --workdir from its latest "
                    "checkpoint (its config must match; more steps are allowed)")
  flags.DEFINE_bool("overwrite", False, "delete the run in --workdir first")
  flags.DEFINE_bool(
      "distributed", False, "join a multi-process run: auto-detected on TPU pods, Slurm, Open "
      "MPI; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (and "
      "JAX_NUM_CPU_DEVICES on CPU)")


def fail(error, status: int):
  """One `error: ...` line on stderr instead of a traceback, then exit with `status`."""
  print(f"error: {error}", file=sys.stderr)
  sys.exit(status)


def check_fields(argv: list[str]) -> None:
  """An unknown `--config.FIELD` is a ValueError listing the fields (absl's config flags
  would fail with a bare KeyError while being defined)."""
  fields = configs.get_config().keys()
  for arg in argv:
    field = arg[len("--config."):].split("=", 1)[0].split(".", 1)[0]
    if arg.startswith("--config.") and field not in fields:
      raise ValueError(f"unknown flag --config.{field}; the fields are {', '.join(fields)}")


def _named(argv: list[str]) -> list[str]:
  """`--config NAME` / `--config=NAME` -> `--config=<configs file>:NAME` (absl's form)."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg == "--config" and i + 1 < len(argv):
      arg, i = f"--config={argv[i + 1]}", i + 1
    if arg.startswith("--config=") and arg[len("--config="):] in configs.CONFIGS:
      arg = f"--config={CONFIG_FILE}:{arg[len('--config='):]}"
    elif arg.startswith("--config=") and ":" not in arg and not arg.endswith(".py"):
      configs.get_config(arg[len("--config="):])  # raises, listing the names
    out.append(arg)
    i += 1
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with bad input as one `error: ...` line and exit status 2."""
  try:
    return flags.FLAGS(_named(argv))
  except (flags.Error, ValueError) as e:
    fail(e, 2)


def main(argv) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; flags are --config.FIELD=VALUE", 2)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  if flags.FLAGS.distributed:
    from contrax import parallel  # joining must precede any JAX computation
    parallel.initialize_distributed()
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir or os.path.join("runs", config.name)
  try:
    summary = train.pretrain(config, workdir, resume=flags.FLAGS.resume,
                             overwrite=flags.FLAGS.overwrite)
  except train.ConfigError as e:  # bad config, output directory or data: nothing was run
    fail(e, 2)
  except FloatingPointError as e:  # the non-finite guard stopped the run
    fail(e, 1)
  except runs.Preempted as e:  # SIGTERM: checkpoint committed at a step boundary
    if jax.process_index() == 0:
      print(e, file=sys.stderr)
    sys.exit(0)
  if jax.process_index() == 0:  # every process holds the same summary
    print(json.dumps(summary, indent=2))
    print(f"run directory: {os.path.abspath(workdir)}")


if __name__ == "__main__":
  try:
    check_fields(sys.argv[1:])
  except ValueError as e:
    fail(e, 2)
  define_flags()
  app.run(main, flags_parser=parse_flags)
