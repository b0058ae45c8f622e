"""The main job: SimCLR-style contrastive pre-training, then kNN / linear-probe evaluation.

Command (the README's first command runs it; defaults: digits, MLP encoder, NT-Xent):

    python experiments/pretrain.py

Any config field is a flag, e.g. the CIFAR-10 image-folder subset with the ConvNet:

    python experiments/pretrain.py --data folder:../shared/data/cifar10-train-10k \
        --model convnet --augmentation simclr --steps 2000 --batch_size 256

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

from contrax import config as config_lib
from contrax import train


def get_config():
  return train.default_config()


def fail(error: BaseException, status: int):
  """One `error: ...` line on stderr instead of a traceback, then exit with `status`."""
  print(f"error: {error}", file=sys.stderr)
  sys.exit(status)


def main(argv=None) -> dict:
  try:
    config, args = config_lib.parse(get_config(), argv, description=__doc__)
  except ValueError as e:  # a flag's value does not parse as its type
    fail(e, 2)
  workdir = args.workdir or os.path.join("runs", config.name)
  try:
    summary = train.pretrain(config, workdir, resume=args.resume)
  except train.ConfigError as e:  # bad config, output directory or data: nothing was run
    fail(e, 2)
  except FloatingPointError as e:  # the non-finite guard stopped the run
    fail(e, 1)
  print(json.dumps(summary, indent=2))
  print(f"run directory: {os.path.abspath(workdir)}")
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])
