"""The main job: SimCLR-style contrastive pre-training, then kNN / linear-probe evaluation.

Command (the README's first command runs it; defaults: digits, MLP encoder, NT-Xent):

    python experiments/pretrain.py

Any config field is a flag, e.g. the CIFAR-10 image-folder subset with the ConvNet:

    python experiments/pretrain.py --data folder:../shared/data/cifar10-train-10k \
        --model convnet --augmentation simclr --steps 2000 --batch_size 256

The CPU-scale CIFAR recipe (the 10,000-image CIFAR-10 subset, ConvNet, ~30 min on 2 cores;
`--config` picks a base config, flags still override it):

    python experiments/pretrain.py --config cifar10

Writes runs/<name>/ (or --workdir): config.json, metrics.jsonl, loss.png, accuracy.png,
summary.json, checkpoints/. `--resume` continues from the latest checkpoint.

A bad flag, config, output directory or data set prints one `error: ...` line and exits
with status 2 before anything is compiled; a run stopped by a non-finite loss or update
(`--on_nonfinite stop`) prints the step and the last good checkpoint and exits with status 1.

Runtime and result of the default command on a 2-core CPU: see README.md ("Results").
"""
from __future__ import annotations

import json
import os
import sys

import jax

from contrax import config as config_lib
from contrax import train


def cifar10_config():
  """The CPU-scale CIFAR recipe (issue 12): SimCLR on the CIFAR-10 image-folder subset.

  The 10,000 images are split 9,000 / 1,000 (stratified, `data.load`'s test_fraction=0.1):
  pre-training and the kNN memory bank / linear-probe training set use the 9,000, accuracy is
  measured on the 1,000 held-out images. Budget: about 30 minutes on a quiet 2-core CPU
  (README, "Results").
  """
  c = train.default_config()
  c.name = "cifar10"
  c.data = "folder:../shared/data/cifar10-train-10k"
  c.model = "convnet"
  c.projection_dim = 128
  c.augmentation = "simclr"
  c.temperature = 0.2
  c.batch_size = 128
  c.steps = 3500
  c.learning_rate = 2e-3
  c.warmup_steps = 200
  c.eval_every = 500
  c.checkpoint_every = 500
  return c


CONFIGS = {"digits": train.default_config, "cifar10": cifar10_config}


def get_config(name: str = "digits"):
  if name not in CONFIGS:
    raise ValueError(f"unknown --config {name!r}; valid choices: {', '.join(sorted(CONFIGS))}")
  return CONFIGS[name]()


def fail(error: BaseException, status: int):
  """One `error: ...` line on stderr instead of a traceback, then exit with `status`."""
  print(f"error: {error}", file=sys.stderr)
  sys.exit(status)


def _pop_config_name(argv: list) -> str:
  """Remove `--config NAME` / `--config=NAME` from argv (the base config the flags override)."""
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      name = argv[i + 1]
      del argv[i:i + 2]
      return name
    if arg.startswith("--config="):
      del argv[i]
      return arg.split("=", 1)[1]
  return "digits"


def main(argv=None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    config, args = config_lib.parse(get_config(_pop_config_name(argv)), argv,
                                    description=__doc__)
  except ValueError as e:  # an unknown --config, or a flag's value does not parse as its type
    fail(e, 2)
  workdir = args.workdir or os.path.join("runs", config.name)
  try:
    summary = train.pretrain(config, workdir, resume=args.resume)
  except train.ConfigError as e:  # bad config, output directory or data: nothing was run
    fail(e, 2)
  except FloatingPointError as e:  # the non-finite guard stopped the run
    fail(e, 1)
  if jax.process_index() == 0:  # every process holds the same summary
    print(json.dumps(summary, indent=2))
    print(f"run directory: {os.path.abspath(workdir)}")
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])
