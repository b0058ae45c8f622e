"""Small matplotlib helpers shared by the training loop and the experiment scripts."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def line_plot(path: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
              xlabel: str, ylabel: str, title: str = "", logx: bool = False,
              logy: bool = False, markers: bool = False) -> None:
  """Write a PNG with one line per named `(x, y)` series."""
  fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
  for name, (x, y) in series.items():
    ax.plot(x, y, marker="o" if markers else None, ms=3, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  ax.grid(alpha=0.3)
  if len(series) > 1:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
