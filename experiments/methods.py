"""Every training method of contrax on the same data, encoder and budget, against SimCLR.

Each method is a cell of `experiments/_study.py`: `method.name` from `contrax.methods.NAMES`
(SimCLR, BYOL, SimSiam, MoCo, VICReg, SwAV, DINO, NNCLR, ... whichever are registered), with
its paper's hyper-parameters (`method.<name>.*` defaults), plus Barlow Twins as a loss of the
contrastive method. Every cell trains the same encoder with the same augmentation, optimiser,
batch and number of steps through `contrax.train.pretrain` (the main job's code path), and is
evaluated after training by kNN (k = 200, Wu et al. 2018) and a linear probe on the frozen
features of held-out images; `seeds` seeds each. The table gives mean ± sample std (ddof = 1)
over seeds, each method minus SimCLR of the same seed (the seed fixes the split and the
initialisation, which move every method alike), and the wall time per run; the figure shows
the same numbers.

Commands:

    python experiments/methods.py                          # digits, MLP, every method, 3 seeds
    python experiments/methods.py --config.methods=simclr,byol --config.seeds=0 \\
        --config.steps=50                                  # a smoke run

Longer setting (the CIFAR-10 image folder, the CPU recipe's ConvNet):

    python experiments/methods.py --config.data=folder:PATH/TO/cifar10-train-10k \\
        --config.model=convnet --config.augmentation=simclr --config.steps=1500 \\
        --config.batch_size=256 --workdir=runs/methods_cifar

Writes runs/methods/ (or --workdir): runs/<method>_seed<seed>/ (each a `train.pretrain` run
directory), config.json, results.json, results.md, accuracy.png, summary.json.
"""
from __future__ import annotations

import ml_collections

import _study
from contrax import methods, train

METRICS = {"knn_accuracy": "kNN acc.", "linear_accuracy": "linear acc.",
           "wall_seconds": "wall s / run"}
REFERENCE = "simclr"
# Cells that are not a registered method: objectives of the contrastive method.
LOSS_CELLS = {"barlow_twins": {"preset": "barlow"}, "vicreg": {"preset": "vicreg"}}
# The papers' defaults are sized for ImageNet: queues of 65,536 keys (the digits training split
# has 1,347 images, so such a queue would hold mostly its random initial keys for hundreds of
# steps) and DINO's 65,536-way head over 2 + 8 crops (20 steps take minutes on a CPU). On CPU
# budgets the study scales them down; `--config.paper_sizes=true` keeps the papers' sizes.
CPU_SIZES = {
    "moco_v2": {"method.moco_v2.queue_size": 1024},
    "nnclr": {"method.nnclr.queue_size": 1024, "method.nnclr.predictor_hidden_dim": 256},
    "swav": {"method.swav.num_prototypes": 300},
    "dino": {"method.dino.out_dim": 1024, "method.dino.hidden_dim": 256,
             "method.dino.bottleneck_dim": 64, "method.dino.num_local_crops": 2},
}


def get_config() -> ml_collections.ConfigDict:
  c = train.default_config()
  c.name = "methods"
  c.steps = 600
  c.log_every = 100
  c.eval_every = 0
  c.checkpoint_every = 0
  c.progress = False
  c.methods = ""  # comma-separated names; "" = every registered method and LOSS_CELLS
  c.paper_sizes = False  # True: the papers' queue and head sizes (CPU_SIZES not applied)
  c.seeds = (0, 1, 2)
  return c


def cells(config) -> dict[str, dict]:
  """Method name -> its cell (`method.name`, or a loss preset of the contrastive method)."""
  every = {name: {"method.name": name,
                  **({} if config.paper_sizes else CPU_SIZES.get(name, {}))}
           for name in methods.NAMES}
  every.update(LOSS_CELLS)
  chosen = tuple(m.strip() for m in config.methods.split(",") if m.strip()) or tuple(every)
  unknown = [m for m in chosen if m not in every]
  if unknown:
    raise ValueError(f"methods={unknown} are not methods; valid choices: {', '.join(every)}")
  if REFERENCE not in chosen:
    chosen = (REFERENCE, *chosen)
  return {name: every[name] for name in chosen}


def run_one(run, run_dir: str, dataset) -> dict:
  summary = _study.pretrain(run, run_dir, dataset)
  return {key: summary[key] for key in METRICS}


def plot(stats: dict, records: list, workdir: str) -> None:
  """kNN and linear accuracy per method (mean ± sample std), and minus SimCLR by seed."""
  del records
  import matplotlib.figure
  import numpy as np

  names = list(stats)
  fig = matplotlib.figure.Figure(figsize=(max(6, 1.1 * len(names)), 6), dpi=110)
  axes = fig.subplots(2, 1, sharex=True)
  x = np.arange(len(names))
  for offset, (key, label) in zip((-0.2, 0.2), (("knn_accuracy", "kNN"),
                                                 ("linear_accuracy", "linear probe"))):
    for row, stat in enumerate((key, f"{key}_minus_{REFERENCE}")):
      values = [stats[n][stat][0] if stat in stats[n] else np.nan for n in names]
      errors = [_study.errorbar_std(stats[n][stat]) if stat in stats[n] else 0.0 for n in names]
      axes[row].bar(x + offset, values, width=0.4, yerr=errors, capsize=3, label=label)
  axes[0].set_ylabel("test accuracy")
  axes[0].set_title("mean ± sample std over seeds")
  axes[0].legend(fontsize=8)
  axes[1].axhline(0.0, color="0.6", lw=0.8)
  axes[1].set_ylabel("method − SimCLR, same seed")
  axes[1].set_xticks(x, names, rotation=30, ha="right")
  fig.tight_layout()
  fig.savefig(f"{workdir}/accuracy.png")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  title = (f"{config.data}, {config.model}, {config.steps} steps of batch {config.batch_size}; "
           "each method with its paper's hyper-parameters (config.json)")
  return _study.run(config, workdir, cells=cells(config), run_one=run_one, metrics=METRICS,
                    reference=REFERENCE, paired_metrics=("knn_accuracy", "linear_accuracy"),
                    title=title, plot=plot)


if __name__ == "__main__":
  _study.main(get_config, run)
