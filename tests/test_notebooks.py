"""Every notebook in notebooks/ is committed executed, with its figures.

The notebooks are executed again at their small size (`CONTRAX_NOTEBOOK_SMALL=1`) by the docs
build in .ci/run (MyST-NB, a failing cell fails the build), and docs/check_site.py checks that
each page shows the `FIGURES` below.
"""
from __future__ import annotations

import os

import pytest

import nbformat  # a dev dependency: missing is a failure, not a skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
# The number of `image/png` outputs each notebook draws at small size.
FIGURES = {"alpha_cl.ipynb": 2, "curl_convergence.ipynb": 6, "generalization.ipynb": 5,
           "hard_negatives.ipynb": 3, "mutual_information.ipynb": 2}
CELL_TIMEOUT_S = 300


def test_every_notebook_is_listed():
  assert sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb")) == sorted(FIGURES)


def count_figures(notebook) -> int:
  return sum("image/png" in output.get("data", {})
             for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_notebook_holds_its_outputs_and_no_developer_links(name):
  with open(os.path.join(NOTEBOOKS, name)) as f:
    text = f.read()
  notebook = nbformat.reads(text, as_version=4)
  assert all(cell.execution_count is not None for cell in notebook.cells
             if cell.cell_type == "code"), f"{name} is committed unexecuted"
  assert count_figures(notebook) == FIGURES[name]
  for pointer in ("SPEC", "../" + "shared", "DESIGN" + ".md"):
    assert pointer not in text, f"{name} points to {pointer!r}; link docs/references.md instead"
