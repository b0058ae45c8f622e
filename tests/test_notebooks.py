"""Every notebook in notebooks/ executes at its small size and draws its figures.

Each notebook is run from a fresh copy of the committed file (outputs cleared) with nbclient,
kernel python3, cwd notebooks/, `CONTRAX_NOTEBOOK_SMALL=1`, a timeout per cell; a cell that
raises fails the test (nbclient's `CellExecutionError` names the cell and the traceback). The
five together take several minutes of CPU, so the module is `slow` (CI's second command).
"""
from __future__ import annotations

import os

import pytest

import nbformat  # dev dependencies: missing is a failure, not a skip
import nbclient

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


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_executes_at_small_size(name, monkeypatch):
  monkeypatch.setenv("CONTRAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
  nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                          resources={"metadata": {"path": NOTEBOOKS}}).execute()
  assert count_figures(notebook) == FIGURES[name], f"{name} drew a different number of figures"


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
