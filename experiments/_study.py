"""One runner for the studies: named cells × seeds, one dataset per seed, mean ± std tables.

A study is a config, a list of cells and a per-run function:

    cells = {"simclr": {"preset": "ntxent"}, "eps0.3": {"preset": "hcl_ot",
                                                          "weighting.ot.epsilon": 0.3}}
    summary = run(config, workdir, cells=cells, run_one=fn, metrics={"knn_accuracy": "kNN"},
                  reference="simclr", title="...", plot=draw)

`run_one(run_config, run_dir, dataset) -> dict of numbers` is called once per (cell, seed)
with `run_config = apply_cell(config, cell)` at `seed`, its own directory
`workdir/runs/<cell>_seed<seed>` and the dataset of that seed, loaded once per study and seed
(the split depends on the seed) and shared by every cell. A run whose `record.json` exists
(written when `run_one` returned) and whose cell and seed agree is reused, not rerun; an
interrupted study resumes where it stopped.

Statistics: over the n seeds of a cell, mean and the *sample* standard deviation
`s = sqrt(Σ (x_i − x̄)² / (n − 1))` (ddof = 1). With n = 1 there is no std: the table says
"n = 1, no std" and summary.json holds `null` (never a made-up ± 0). With a `reference` cell,
every metric is also compared paired by seed: `x_cell(seed) − x_reference(seed)` over the
seeds both hold (the seed fixes the split and the initialisation, which move every cell
alike, so the paired spread is the one that says whether two cells differ).

Writes workdir/: config.json, runs/<cell>_seed<seed>/ (record.json and whatever `run_one`
writes; a training run's own metrics.jsonl and TensorBoard curves), results.json (one record
per run), results.md (the table), summary.json, tensorboard/ (one HParams session per run:
`cell` and `seed` as hyperparameters, the study's metrics as `study/<metric>`; open with
`tensorboard --logdir workdir`), and the plot hook's files.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from contrax import objectives, runs

STD_NOTE = "mean ± sample std (ddof = 1) over the n seeds of each cell"


def apply_cell(config: ml_collections.ConfigDict, cell: Mapping[str, Any]
               ) -> ml_collections.ConfigDict:
  """A copy of `config` with a cell applied: `preset` (a loss preset name) then dotted overrides
  (`"weighting.ot.epsilon": 0.3`, `"augmentation": "crop"`). Every key must exist in `config`."""
  out = ml_collections.ConfigDict(config.to_dict())
  if "preset" in cell:
    out = objectives.apply_preset(out, cell["preset"])
  for key, value in cell.items():
    if key == "preset":
      continue
    *parents, leaf = key.split(".")
    node = out
    for part in parents:
      node = node.get(part)
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"cell key {key!r}: {part!r} is not a sub-config of the study config")
    if leaf not in node:
      raise ValueError(f"cell key {key!r} is not a field of the study config; cell: {dict(cell)}")
    with node.ignore_type():
      node[leaf] = value
  return out


def mean_std(values) -> tuple[float, float]:
  """`(mean, sample std with ddof = 1)`; ValueError for fewer than two values (no std)."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or len(values) < 2:
    raise ValueError(f"a standard deviation needs n >= 2 values, got n = {values.size}")
  return float(values.mean()), float(values.std(ddof=1))


def _stat(values) -> list:
  """`[mean, std]`, or `[mean, None]` for one value."""
  if len(values) == 1:
    return [float(values[0]), None]
  return list(mean_std(values))


def aggregate(records: list[dict], metrics, reference: str | None = None,
              paired_metrics=None) -> dict:
  """Per cell: `seeds` (n), `[mean, std]` of every metric, and, paired by seed with the
  `reference` cell, `[mean, std]` of `<metric>_minus_<reference>` for the `paired_metrics`
  (default: all; the reference's own is 0 ± 0; absent for cells sharing no seed with it)."""
  by_cell: dict = {}
  for r in records:
    by_cell.setdefault(r["cell"], []).append(r)
  if reference is not None and reference not in by_cell:
    raise ValueError(f"reference cell {reference!r} has no runs; cells: {sorted(by_cell)}")
  base = {r["seed"]: r for r in by_cell.get(reference, [])}
  out = {}
  for cell, rs in by_cell.items():
    out[cell] = {"seeds": len(rs), **{k: _stat([r[k] for r in rs]) for k in metrics}}
    paired = [r for r in rs if r["seed"] in base]
    if paired:
      for k in metrics if paired_metrics is None else paired_metrics:
        out[cell][f"{k}_minus_{reference}"] = _stat([r[k] - base[r["seed"]][k] for r in paired])
  return out


def format_stat(stat, signed: bool = False) -> str:
  """`0.953 ± 0.016`; `0.953 (n = 1, no std)`; '–' when absent."""
  if stat is None:
    return "–"
  mean, std = stat
  text = f"{mean:{'+' if signed else ''}.3f}"
  return text + (" (n = 1, no std)" if std is None else f" ± {std:.3f}")


def table(stats: dict, metrics: Mapping[str, str], reference: str | None = None,
          title: str = "") -> str:
  """Markdown: one row per cell, `| cell | n | metric ... | metric − reference (paired) ... |`."""
  head = ["cell", "seeds"] + list(metrics.values())
  paired = [k for k in metrics if any(f"{k}_minus_{reference}" in s for s in stats.values())]
  head += [f"{metrics[k]} − {reference} (paired by seed)" for k in paired]
  lines = ([title, ""] if title else []) + [
      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for cell, s in stats.items():
    cells = [format_stat(s[k]) for k in metrics]
    cells += [format_stat(s.get(f"{k}_minus_{reference}"), signed=True) for k in paired]
    lines.append(f"| {cell} | {s['seeds']} | " + " | ".join(cells) + " |")
  lines += ["", STD_NOTE + (f"; paired columns: the cell minus {reference} of the same seed"
                            if paired else "") + "."]
  return "\n".join(lines)


def load_dataset(run_config: ml_collections.ConfigDict):
  """The dataset `train.pretrain` trains `run_config` on (its data spec and seed)."""
  from contrax import data
  options = ({"on_bad_file": run_config.get("on_bad_file", "skip")}
             if run_config.data.startswith("folder:") else {})
  return data.load(run_config.data, seed=run_config.seed, **options)


def train_config(run_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The fields of `run_config` that `train.default_config()` has (the study's own dropped)."""
  from contrax import train
  c = train.default_config()
  for key in c.keys():
    if key in run_config:
      with c.ignore_type():
        c[key] = run_config[key]
  return c


def pretrain(run_config: ml_collections.ConfigDict, run_dir: str, dataset) -> dict:
  """`train.pretrain_once` of the training fields of `run_config` on the preloaded `dataset`."""
  from contrax import train
  return train.pretrain_once(train_config(run_config), run_dir, dataset=dataset)


def write_json(path: str, value) -> str:
  """`value` as indented JSON at `path` (NumPy and JAX scalars as floats); returns `path`."""
  with open(path, "w") as f:
    json.dump(value, f, indent=2, default=float)
  return path


def write_result(workdir: str, name: str, result: dict, markdown: Callable[[dict], str]) -> None:
  """A study part's `workdir/<name>.json` (`result`) and `workdir/<name>.md` (its table)."""
  write_json(os.path.join(workdir, f"{name}.json"), result)
  with open(os.path.join(workdir, f"{name}.md"), "w") as f:
    f.write(markdown(result))


def save_figure(fig, path: str) -> None:
  """A pyplot figure laid out tightly, written to `path` and closed."""
  import matplotlib.pyplot as plt  # imported here: the harness itself draws nothing

  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def check_choices(field: str, values, choices) -> None:
  """Every entry of `values` is one of `choices`, else ValueError naming the config `field`."""
  for value in values:
    if value not in choices:
      raise ValueError(f"unknown value {value!r} in {field}; valid choices: {tuple(choices)}")


def progress_bar(total: int, desc: str, enabled: bool = True):
  """A tqdm bar of `total` steps that leaves no line behind (disabled: a no-op bar)."""
  return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _finished(run_dir: str, cell: Mapping, seed: int) -> dict | None:
  path = os.path.join(run_dir, "record.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  if record.get("cell_overrides") != json.loads(json.dumps(dict(cell))) or record["seed"] != seed:
    raise ValueError(f"{run_dir} holds a finished run of another cell or seed "
                     f"({record.get('cell_overrides')}, seed {record['seed']}); use another "
                     "workdir or delete that run")
  return record


def write_tensorboard(workdir: str, records: list[dict], metrics: Mapping[str, str]) -> str:
  """Rewrite `workdir/tensorboard`: one HParams session per record (`cell`, `seed`) with its
  numeric `metrics` as scalars `study/<metric>`; returns the directory."""
  from tensorboardX import SummaryWriter  # imported here: it loads protobuf

  path = os.path.join(workdir, "tensorboard")
  shutil.rmtree(path, ignore_errors=True)  # rewritten whole: a resumed study lists each run once
  with SummaryWriter(path) as writer:
    for r in records:
      values = {f"study/{k}": float(r[k]) for k in metrics
                if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)}
      writer.add_hparams({"cell": r["cell"], "seed": int(r["seed"])}, values,
                         name=f"{r['cell']}_seed{r['seed']}")
  return path


def run(config: ml_collections.ConfigDict, workdir: str, *,
        cells: Mapping[str, Mapping[str, Any]],
        run_one: Callable[[ml_collections.ConfigDict, str, Any], dict],
        metrics: Mapping[str, str], reference: str | None = None, paired_metrics=None,
        title: str = "",
        load: Callable[[ml_collections.ConfigDict], Any] = load_dataset,
        plot: Callable[[dict, list, str], None] | None = None) -> dict:
  """Every (cell, seed in `config.seeds`) through `run_one`; writes and returns the summary
  `{"stats", "runs", "wall_seconds", "std"}` (see the module docstring)."""
  seeds = tuple(config.seeds)
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
  if reference is not None and reference not in cells:
    raise ValueError(f"reference {reference!r} is not a cell; cells: {list(cells)}")
  configs = {name: apply_cell(config, cell) for name, cell in cells.items()}  # checks all first
  os.makedirs(workdir, exist_ok=True)
  write_json(os.path.join(workdir, "config.json"), config.to_dict())
  start = time.time()
  records, datasets = [], {}
  for seed in seeds:
    for name, cell in cells.items():
      run_dir = os.path.abspath(os.path.join(workdir, "runs", f"{name}_seed{seed}"))
      record = _finished(run_dir, cell, seed)
      if record is None:
        run_config = configs[name].copy_and_resolve_references()
        run_config.seed = seed
        key = (run_config.get("data"), seed)
        if key not in datasets:
          datasets[key] = load(run_config)
        os.makedirs(run_dir, exist_ok=True)
        record = dict(cell=name, seed=seed, cell_overrides=dict(cell),
                      **run_one(run_config, run_dir, datasets[key]))
        write_json(os.path.join(run_dir, "record.json"), record)
      records.append(record)
      print(json.dumps(record), flush=True)
      write_json(os.path.join(workdir, "results.json"), records)
  stats = aggregate(records, metrics, reference, paired_metrics)
  write_tensorboard(workdir, records, metrics)
  text = table(stats, metrics, reference, title)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(text + "\n")
  if plot is not None:
    plot(stats, records, workdir)
  summary = dict(stats=stats, runs=len(records), wall_seconds=time.time() - start, std=STD_NOTE)
  write_json(os.path.join(workdir, "summary.json"), summary)
  print(text)
  return summary


def main(get_config: Callable[[], ml_collections.ConfigDict],
         run_study: Callable[[ml_collections.ConfigDict, str], dict]) -> None:
  """A study's command line: `--config.<field>=VALUE` over `get_config()` (absl +
  `ml_collections.config_flags`) and `--workdir=DIR` (default runs/<config.name>), then
  `run_study(config, workdir)`."""
  from absl import app, flags
  from ml_collections import config_flags

  config = get_config()
  fields = "\n".join(f"  --config.{k} (default: {v!r})" for k, v in runs.dotted_fields(config).items())
  config_flags.DEFINE_config_dict(
      "config", config, "override a field: --config.x=VALUE (tuples: 1,2,3). The objective "
      "fields a cell sets (loss.name, loss.tau_plus, loss.decoupled, weighting.name, "
      "weighting.stop_gradient, and a cell's own overrides) are replaced per cell; the study's "
      "cells are listed in its docstring above. Fields:\n" + fields)
  flags.DEFINE_string("workdir", None, "output directory (default: runs/<config.name>)")

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = flags.FLAGS.config
    run_study(config, flags.FLAGS.workdir or os.path.join("runs", config.name))

  app.run(_main)


def errorbar_std(stat) -> float:
  """The std of a `[mean, std]` for an error bar: 0 where n = 1 gave none."""
  return 0.0 if stat[1] is None else stat[1]
