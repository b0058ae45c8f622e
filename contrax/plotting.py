"""Matplotlib figures for training runs, the experiment scripts and the notebooks.

Everything goes through matplotlib's object API: a function builds and returns a
`matplotlib.figure.Figure` (shown inline by Jupyter when it is a cell's value) and `save`
writes one through the Agg canvas. Nothing here calls `matplotlib.use` or keeps pyplot state,
so importing contrax never changes the backend of the process (`plt.show()` in a notebook keeps
working) and figures built here are never left open in pyplot's figure manager.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.typing import ColorType

__all__ = [
    "save", "line_figure", "line_plot", "loss_figure", "accuracy_figure", "heatmap",
    "labelled_scatter",
]

_SIZE = (5.5, 3.8)
_DPI = 110
_RANDOM_INIT = "random init kNN"


def _figure(figsize: tuple[float, float] = _SIZE) -> Figure:
  return Figure(figsize=figsize, dpi=_DPI, layout="constrained")


def save(fig: Figure, path: str | os.PathLike) -> None:
  """Write `fig` to `path` (the format follows the extension: .png, .pdf, .svg, ...)."""
  if not isinstance(fig, Figure):
    raise TypeError(f"fig must be a matplotlib.figure.Figure, got {type(fig).__name__}")
  FigureCanvasAgg(fig)  # attaches itself as fig.canvas; pdf/svg switch canvas when printing
  fig.savefig(path)


def line_figure(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                xlabel: str, ylabel: str, title: str = "", logx: bool = False,
                logy: bool = False, markers: bool = False,
                ylim: tuple[float, float] | None = None) -> Figure:
  """One line per named `(x, y)` series; a legend when there is more than one."""
  if not series:
    raise ValueError("series must hold at least one named (x, y) pair, got none")
  fig = _figure()
  ax = fig.add_subplot()
  for name, (x, y) in series.items():
    if len(x) != len(y):
      raise ValueError(f"series {name!r}: x and y must have the same length, got {len(x)} "
                       f"and {len(y)}")
    ax.plot(x, y, marker="o" if markers else None, ms=3, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.grid(alpha=0.3)
  if len(series) > 1:
    ax.legend(fontsize=8)
  return fig


def line_plot(path: str | os.PathLike,
              series: Mapping[str, tuple[Sequence[float], Sequence[float]]], **kwargs) -> None:
  """`save(line_figure(series, **kwargs), path)`: a PNG with one line per named series."""
  save(line_figure(series, **kwargs), path)


def loss_figure(records: Sequence[Mapping]) -> Figure:
  """Training loss vs step from a run's metrics records (those holding `loss`)."""
  train = [r for r in records if "loss" in r]
  if not train:
    raise ValueError("records hold no training record (a dict with 'step' and 'loss')")
  return line_figure({"train loss": ([r["step"] for r in train], [r["loss"] for r in train])},
                     xlabel="step", ylabel="loss", title="training loss")


def _label_value(ax, x: float, y: float, color: ColorType, *, offset: tuple[int, int],
                 ha: str) -> None:
  ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=offset, ha=ha,
              va="center", fontsize=7, color=color)


def accuracy_figure(records: Sequence[Mapping]) -> Figure:
  """Held-out accuracy of a run at a glance, on a fixed 0..1 axis with the values written.

  Draws the kNN accuracy vs step (every record holding `knn_accuracy`), the random-init
  baseline (the evaluation record at step 0) as a dashed horizontal line, and the final
  linear-probe accuracy (the record holding `linear_accuracy`) as a distinct marker. The y
  axis spans [0, 1] so that a 0.4-point change looks like one.
  """
  evals = sorted((r for r in records if "knn_accuracy" in r), key=lambda r: r["step"])
  if not evals:
    raise ValueError("records hold no evaluation record (a dict with 'step' and "
                     "'knn_accuracy')")
  fig = _figure()
  ax = fig.add_subplot()
  steps = [r["step"] for r in evals]
  knn = [r["knn_accuracy"] for r in evals]
  (line,) = ax.plot(steps, knn, marker="o", ms=4, label="kNN test accuracy")
  for x, y in zip(steps, knn):
    _label_value(ax, x, y, line.get_color(), offset=(0, -10), ha="center")
  baseline = [r for r in evals if r["step"] == 0]
  if baseline:
    ax.axhline(baseline[0]["knn_accuracy"], ls="--", lw=1, color="0.4", label=_RANDOM_INIT)
  probes = [r for r in records if "linear_accuracy" in r]
  if probes:
    final = max(probes, key=lambda r: r["step"])
    (probe,) = ax.plot([final["step"]], [final["linear_accuracy"]], ls="none", marker="*",
                       ms=11, color="C3", label="linear probe (final)")
    _label_value(ax, final["step"], final["linear_accuracy"], probe.get_color(), offset=(-9, 0),
                 ha="right")
  ax.set_ylim(0.0, 1.0)
  ax.set_xlabel("step")
  ax.set_ylabel("test accuracy")
  ax.set_title("accuracy on the held-out test split")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  return fig


def heatmap(ax, matrix, *, vmin: float, vmax: float, label: str):
  """`matrix` as an image on `ax` with a colour bar labelled `label`; returns the image.

  `vmin`/`vmax` are required so that panels meant to be compared share one colour scale.
  """
  matrix = np.asarray(matrix)
  if matrix.ndim != 2:
    raise ValueError(f"matrix must be 2-D, got shape {matrix.shape}")
  if not vmin < vmax:
    raise ValueError(f"vmin must be below vmax, got vmin={vmin} and vmax={vmax}")
  image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="viridis", interpolation="nearest")
  ax.figure.colorbar(image, ax=ax, label=label)
  return image


def labelled_scatter(ax, x: Sequence[float], y: Sequence[float], labels: Sequence[str], *,
                     label: str | None = None, **scatter_kwargs):
  """`ax.scatter(x, y)` with each point annotated by its entry of `labels`; returns the paths."""
  if not len(x) == len(y) == len(labels):
    raise ValueError(f"x, y and labels must have the same length, got {len(x)}, {len(y)} "
                     f"and {len(labels)}")
  points = ax.scatter(x, y, label=label, **scatter_kwargs)
  for xi, yi, text in zip(x, y, labels):
    ax.annotate(str(text), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
  return points
