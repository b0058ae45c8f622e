"""Mutual information done rigorously (Lee et al. 2024, our reconstruction: its exact
statements could not be read): four studies on known-MI tasks, one script each, with its
config, per-run diagnostic, table and the result of its default command:

(a) `mi_staircase.py`: every estimator × critic × batch on a Gaussian MI staircase;
(b) `mi_small_batch.py`: InfoNCE at small batch, the training value vs the MI carried;
(c) `mi_measure.py`: estimated MI of representations (best estimator of (a)) vs probe accuracy;
(d) `mi_infomin.py`: probe accuracy as the views share more task or nuisance bits.

This script runs the parts in `parts` into one directory. Command (every config field is a
flag, e.g. `--config.staircase.steps_per_level=200`; tuples as
`--config.staircase.batch_sizes=64,256`, strings as a Python literal,
`--config.parts="('staircase','measure')"`):

    python experiments/mutual_information.py

Writes runs/mutual_information/ (or --workdir): config.json, every part's files (.json, .md,
.png) and summary.json (their headline numbers and seconds).

Runtime of the default command on the 2-core CPU, measured while 5–8 other jobs shared it
(load average 10–17): 44 min wall, 8 min 53 s CPU (user + sys), so ≤ 9 minutes on an idle
2-core machine (staircase ≈ 60 %).
"""
from __future__ import annotations

import json
import os
import sys
import time

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the parts, when loaded by path
import _study  # noqa: E402
import mi_infomin  # noqa: E402
import mi_measure  # noqa: E402
import mi_small_batch  # noqa: E402
import mi_staircase  # noqa: E402

PARTS = ("staircase", "small_batch", "measure", "infomin")
MODULES = dict(zip(PARTS, (mi_staircase, mi_small_batch, mi_measure, mi_infomin)))
RECONSTRUCTION_NOTE = mi_staircase.RECONSTRUCTION_NOTE
# Parts (a) and (b) under the names the notebook uses.
run_staircase, staircase_markdown = mi_staircase.run, mi_staircase.markdown
run_small_batch, small_batch_markdown = mi_small_batch.run, mi_small_batch.markdown


def _merged(configs: list[ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  c = configs[0]
  c.name, c.parts = "mutual_information", PARTS
  for part, other in zip(PARTS[1:], configs[1:]):
    c[part] = other[part]
  return c


def get_config() -> ml_collections.ConfigDict:
  """Every part's defaults (`chunk`: steps per jitted scan call, one compile per config)."""
  return _merged([MODULES[p].get_config() for p in PARTS])


def tiny_config() -> ml_collections.ConfigDict:
  """A few-seconds version of every part (tests, notebook smoke runs)."""
  return _merged([MODULES[p].tiny_config() for p in PARTS])


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Eager checks of the config's choices (ValueError naming the field)."""
  _study.check_choices("parts", config.parts, PARTS)
  for part in PARTS:
    if part in config:
      MODULES[part].validate(config)
  if int(config.chunk) < 1:
    raise ValueError(f"chunk must be >= 1, got {config.chunk!r}")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Run the configured parts into `workdir`; returns the summary (also summary.json)."""
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  _study.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  summary: dict = dict(note=RECONSTRUCTION_NOTE, seconds={})
  results = {}
  for part in (p for p in PARTS if p in config.parts):
    start = time.perf_counter()
    if part == "measure" and config.measure.estimator == "auto" and "staircase" in results:
      results[part] = mi_measure.run(config, workdir, results["staircase"]["best_overall"])
    else:
      results[part] = MODULES[part].run(config, workdir)
    summary[part] = {k: results[part][k] for k in MODULES[part].SUMMARY}
    summary["seconds"][part] = time.perf_counter() - start
  summary["seconds"]["total"] = sum(summary["seconds"].values())
  _study.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def run_and_print(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`run`, then every part's table, the seconds and the run directory."""
  summary = run(config, workdir)
  for part in (p for p in PARTS if p in summary):
    with open(os.path.join(workdir, f"{part}.md")) as f:
      print(f.read())
  print(json.dumps(summary["seconds"]))
  print(f"run directory: {os.path.abspath(workdir)}")
  return summary


if __name__ == "__main__":
  _study.main(get_config, run_and_print)
