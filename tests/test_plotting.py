"""contrax.plotting: figures through the object API, never touching the process's backend."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from contrax import plotting

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _non_agg_backend() -> str:
  if importlib.util.find_spec("matplotlib_inline") is not None:
    return "module://matplotlib_inline.backend_inline"  # what Jupyter uses
  return "svg"


def test_importing_train_keeps_the_backend():
  # Regression: plotting.py called matplotlib.use("Agg") at import, so `import contrax.train`
  # in Jupyter switched the whole kernel to Agg and plt.show() drew nothing.
  backend = _non_agg_backend()
  env = dict(os.environ, MPLBACKEND=backend,
             PYTHONPATH=os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")]))
  code = "import matplotlib, contrax.train; print(matplotlib.get_backend())"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, cwd=_ROOT).stdout.split()
  assert out == [backend]


def test_line_figure_draws_each_series(tmp_path):
  fig = plotting.line_figure({"a": ([0, 1, 2], [3.0, 2.0, 1.0]), "b": ([0, 2], [1.0, 5.0])},
                             xlabel="step", ylabel="loss", title="t", logy=True, ylim=(0.5, 6))
  assert isinstance(fig, Figure)
  (ax,) = fig.axes
  lines = {line.get_label(): line for line in ax.get_lines()}
  np.testing.assert_array_equal(lines["a"].get_xydata(), [[0, 3], [1, 2], [2, 1]])
  np.testing.assert_array_equal(lines["b"].get_xydata(), [[0, 1], [2, 5]])
  assert ax.get_yscale() == "log" and ax.get_ylim() == pytest.approx((0.5, 6))
  assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("step", "loss", "t")
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
  plotting.save(fig, tmp_path / "f.png")
  with open(tmp_path / "f.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_line_plot_writes_a_png(tmp_path):
  plotting.line_plot(str(tmp_path / "l.png"), {"x": ([1, 2], [1, 2])}, xlabel="n",
                     ylabel="s", logx=True, markers=True)
  assert os.path.getsize(tmp_path / "l.png") > 0


def test_line_figure_errors():
  with pytest.raises(ValueError, match="series"):
    plotting.line_figure({}, xlabel="x", ylabel="y")
  with pytest.raises(ValueError, match="'a'.*same length"):
    plotting.line_figure({"a": ([0, 1], [1.0])}, xlabel="x", ylabel="y")
  with pytest.raises(TypeError, match="Figure"):
    plotting.save("not a figure", "x.png")


RECORDS = [
    {"step": 0, "knn_accuracy": 0.41},
    {"step": 10, "loss": 5.0, "grad_norm": 1.0, "learning_rate": 0.1, "time": 1.0},
    {"step": 20, "loss": 4.0, "grad_norm": 0.9, "learning_rate": 0.05, "time": 2.0},
    {"step": 20, "knn_accuracy": 0.962},
    {"step": 40, "loss": 3.5, "grad_norm": 0.8, "learning_rate": 0.0, "time": 3.0},
    {"step": 40, "knn_accuracy": 0.966, "linear_accuracy": 0.975},
]


def test_accuracy_figure_reads_at_a_glance():
  fig = plotting.accuracy_figure(RECORDS)
  (ax,) = fig.axes
  assert ax.get_ylim() == (0.0, 1.0)  # not auto-zoomed on 0.962..0.966
  lines = {line.get_label(): line for line in ax.get_lines()}
  np.testing.assert_allclose(lines["kNN test accuracy"].get_xydata(),
                             [[0, 0.41], [20, 0.962], [40, 0.966]])
  baseline = lines["random init kNN"]
  assert baseline.get_linestyle() == "--"
  np.testing.assert_allclose(baseline.get_ydata(), [0.41, 0.41])
  np.testing.assert_array_equal(baseline.get_xdata(), [0, 1])  # axhline: axes coordinates
  probe = lines["linear probe (final)"]
  np.testing.assert_allclose(probe.get_xydata(), [[40, 0.975]])
  assert probe.get_marker() != lines["kNN test accuracy"].get_marker()
  assert probe.get_linestyle() == "None"
  assert {t.get_text() for t in ax.texts} == {"0.410", "0.962", "0.966", "0.975"}
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
      "kNN test accuracy", "random init kNN", "linear probe (final)"]


def test_accuracy_figure_without_baseline_or_probe():
  fig = plotting.accuracy_figure([{"step": 5, "knn_accuracy": 0.5}])
  (ax,) = fig.axes
  assert [line.get_label() for line in ax.get_lines()] == ["kNN test accuracy"]
  with pytest.raises(ValueError, match="knn_accuracy"):
    plotting.accuracy_figure(RECORDS[1:3])


def test_loss_figure():
  (ax,) = plotting.loss_figure(RECORDS).axes
  (line,) = ax.get_lines()
  np.testing.assert_array_equal(line.get_xydata(), [[10, 5.0], [20, 4.0], [40, 3.5]])
  with pytest.raises(ValueError, match="loss"):
    plotting.loss_figure([{"step": 0, "knn_accuracy": 0.1}])


def test_heatmap_shares_the_scale_and_has_a_colour_bar():
  fig = Figure()
  axes = fig.subplots(1, 2)
  images = [plotting.heatmap(ax, m, vmin=0.0, vmax=2.0, label="2B pi")
            for ax, m in zip(axes, (np.eye(3), 2 * np.ones((3, 3))))]
  assert all(im.get_clim() == (0.0, 2.0) for im in images)
  np.testing.assert_array_equal(images[0].get_array(), np.eye(3))
  colour_bars = [ax for ax in fig.axes if ax not in axes]
  assert len(colour_bars) == 2 and colour_bars[0].get_ylabel() == "2B pi"
  with pytest.raises(ValueError, match="2-D"):
    plotting.heatmap(axes[0], np.ones(3), vmin=0, vmax=1, label="x")
  with pytest.raises(ValueError, match="vmin"):
    plotting.heatmap(axes[0], np.ones((2, 2)), vmin=1, vmax=1, label="x")


def test_labelled_scatter():
  ax = Figure().subplots()
  points = plotting.labelled_scatter(ax, [0.1, 0.2], [0.3, 0.4], ["crop", "simclr"],
                                     label="ntxent")
  np.testing.assert_allclose(points.get_offsets(), [[0.1, 0.3], [0.2, 0.4]])
  assert [(t.get_text(), t.xy) for t in ax.texts] == [("crop", (0.1, 0.3)),
                                                      ("simclr", (0.2, 0.4))]
  with pytest.raises(ValueError, match="same length"):
    plotting.labelled_scatter(ax, [0.1], [0.3, 0.4], ["a"])
