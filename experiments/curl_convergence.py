"""CURL theory at work ([P000] Merad et al. 2020, Arora et al. 2019).

Background: docs/references.md#curl-latent-classes-and-the-mean-classifier and
docs/references.md#over-parameterised-encoders-and-the-empirical-ntk.

(a) widths: full-batch gradient descent on the logistic CURL loss (base 2) over a fixed set
    of collision-free tuples (x, x⁺, x⁻_1..x⁻_k) of synthetic latent-class points on the
    sphere, for deep ReLU encoders of width m ∈ {64, 256, 1024, 4096} and depth L ∈ {2, 3}
    (NTK parameterisation by default; `--config.widths.parameterisation=allen_zhu` trains the
    hidden layers of the standard parameterisation with step `learning_rate / m`). Per run:
    training loss and error (fraction of tuples with some v_i ≤ 0) per iteration, mean
    output norm, relative parameter movement max_l ‖W_l(T) − W_l(0)‖_F / ‖W_l(0)‖_F, kernel
    drift ‖Θ(T) − Θ(0)‖_F / ‖Θ(0)‖_F, λ_min(Θ(0)) (empirical NTK of the n·d stacked outputs,
    computed layer-wise by `contrax.theory.ntk.layerwise_ntk`). Log–log slopes of movement and
    drift against width are fitted per depth (theory: about −½ for the movement).
(b) negatives: for k ∈ {1, 2, 4, 8, 16}, an NTK-MLP encoder trained by the same gradient
    descent on CURL tuples with k negatives (collisions allowed, as in CURL), on synthetic
    latent classes with an imbalanced ρ and on digits (scikit-learn, 10 classes) used as
    latent classes. On held-out points: τ_k, the stratified L_un, the (k+1)-way
    mean-classifier loss and accuracy over collision-free tuples (left side) and the bound's
    right side (L_un − τ_k ℓ_min)/(1 − τ_k), ℓ_min = log_2 2 = 1; for the encoder at
    initialisation and after training (`contrax.theory.curl_bound`, exact on the sample).

Command (every config field is a flag, e.g. `--config.parts=widths` or
`--config.widths.steps=400`; tuples as `--config.widths.widths=64,256`, several strings as a
Python literal, `--config.negatives.datasets="('synthetic','digits')"`):

    python experiments/curl_convergence.py

Writes runs/curl_convergence/ (or --workdir): config.json, metrics.jsonl (one line per
iteration of every width run, one per row of (b)), widths_training_L<L>.png,
widths_lazy.png, widths_lambda_min.png, negatives_<dataset>.png, summary.md, summary.json.

Runtime of the default command: 615 s wall (172 s CPU time) on a shared 2-core CPU (load
average 12-15 from other jobs, so the process got ~27% of the cores); JAX 0.10.2, float32.
The width-4096 runs dominate (84 s at L=2, 134 s at L=3).

Result of the default command (seed 0). (a) 32 points (4 classes x 8, input dim 16, spread
0.5), 32 collision-free tuples with k = 4, output dim 8, NTK parameterisation, full-batch GD
with step 3.0 for 120 iterations:

| L | m | loss(T)/loss(0) | error(T) | first step with error 0 | movement | kernel drift | λ_min(Θ(0)) |
|---|---|---|---|---|---|---|---|
| 2 | 64 | 3.9e-4 | 0 | 15 | 0.219 | 1.65 | 0.0029 |
| 2 | 256 | 1.1e-3 | 0 | 7 | 0.129 | 0.699 | 0.0070 |
| 2 | 1024 | 2.0e-3 | 0 | 9 | 0.081 | 0.244 | 0.0131 |
| 2 | 4096 | 2.4e-3 | 0 | 8 | 0.038 | 0.055 | 0.0166 |
| 3 | 64 | 2.3e-4 | 0 | 13 | 0.216 | 4.30 | 0.0022 |
| 3 | 256 | 6.3e-4 | 0 | 7 | 0.105 | 1.14 | 0.0142 |
| 3 | 1024 | 1.1e-3 | 0 | 6 | 0.055 | 0.290 | 0.0243 |
| 3 | 4096 | 1.9e-3 | 0 | 8 | 0.029 | 0.095 | 0.0309 |

Fitted log-log slopes of the relative movement against width: -0.41 (L=2), -0.48 (L=3)
(theory -1/2); of the kernel drift: -0.81 and -0.92 (it shrinks monotonically with width).
The widest networks reach zero training error by iteration 8 and end at 0.24% (L=2) and
0.19% (L=3) of their initial loss; λ_min(Θ(0)) grows towards its infinite-width value. The
narrow networks reach a lower loss (their outputs, hence scores, grow faster) at the price
of large kernel drift: they are not in the lazy regime.

(b) NTK-MLP width 256, depth 2, output 16, GD step 10 for 200 iterations on 500 tuples of
500 training points; bound evaluated on held-out points (200 tuples per stratum):

| data | k | τ_k | trained: L_un | lhs L^μ_sup,k | mean-classifier acc | rhs | at init: lhs / rhs |
|---|---|---|---|---|---|---|---|
| synthetic | 1 | 0.181 | 0.606 | 0.143 | 0.955 | 0.519 | 0.954 / 0.956 |
| synthetic | 2 | 0.314 | 1.357 | 0.214 | 0.940 | 1.519 | 1.531 / 1.792 |
| synthetic | 4 | 0.491 | 1.897 | 0.208 | 0.940 | 2.760 | 2.274 / 3.518 |
| synthetic | 8 | 0.674 | 3.693 | 0.568 | 0.835 | 9.254 | 3.099 / 7.501 |
| synthetic | 16 | 0.827 | 4.598 | 0.734 | 0.855 | 21.75 | 4.013 / 18.52 |
| digits | 1 | 0.100 | 0.508 | 0.227 | 0.935 | 0.453 | 0.967 / 0.968 |
| digits | 2 | 0.190 | 0.787 | 0.222 | 0.955 | 0.737 | 1.542 / 1.675 |
| digits | 4 | 0.344 | 1.148 | 0.304 | 0.935 | 1.225 | 2.273 / 2.948 |
| digits | 8 | 0.570 | 1.836 | 0.367 | 0.925 | 2.942 | 3.132 / 5.956 |
| digits | 16 | 0.815 | 2.486 | 0.373 | 0.945 | 9.021 | 4.044 / 17.46 |

The bound holds in all 20 rows (synthetic ρ ∝ 1/(c+1) over 10 classes; digits ρ = class
frequencies). It is tight only for k = 1 at initialisation (outputs near 0, every score
near 0) and loosens quickly with k as τ_k → 1, the known weakness of the CURL bound with
many negatives. On the imbalanced synthetic data the held-out L_un of the trained encoder
exceeds its initial value for k ≥ 8 (collisions with frequent classes are penalised once
output norms grow), while the mean classifier still improves.
"""
from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from contrax import data as data_lib
from contrax import mi, models, theory
from contrax.theory import ntk
from contrax.losses import curl

import matplotlib.pyplot as plt

import _study  # experiments/_study.py: progress bars, JSON, figures and the command line

PARTS = ("widths", "negatives")
PARAMETERISATIONS = ("ntk", "allen_zhu")
DATASETS = ("synthetic", "digits")
LOGISTIC_BASE = 2.0


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "curl_convergence"
  c.seed = 0
  c.parts = PARTS
  c.chunk = 25  # gradient steps per jitted lax.scan call (the progress bar's granularity)
  c.progress = True

  w = c.widths = ml_collections.ConfigDict()
  w.widths = (64, 256, 1024, 4096)
  w.depths = (2, 3)
  w.parameterisation = "ntk"
  w.out_dim = 8
  w.num_classes = 4
  w.points_per_class = 8
  w.input_dim = 16
  w.spread = 0.5
  w.last_coordinate = 0.5
  w.num_tuples = 32
  w.num_negatives = 4
  w.learning_rate = 3.0  # plain GD step (divided by the width for allen_zhu)
  w.steps = 120

  n = c.negatives = ml_collections.ConfigDict()
  n.negatives = (1, 2, 4, 8, 16)
  n.datasets = DATASETS
  n.width = 256
  n.depth = 2
  n.out_dim = 16
  n.learning_rate = 10.0  # inputs on the unit sphere of R^65 (digits) give a small NTK scale
  n.steps = 200
  n.train_points = 500
  n.train_tuples = 500
  n.bound_tuples = 200  # per stratum (collision-free and colliding)
  n.synthetic_classes = 10
  n.synthetic_points_per_class = 100  # half train, half held out
  n.synthetic_dim = 32
  n.synthetic_spread = 1.5
  n.synthetic_imbalance = 1.0  # ρ(c) ∝ (c + 1)^(−imbalance)
  n.last_coordinate = 0.5
  return c


def tiny_config() -> ml_collections.ConfigDict:
  """A few-seconds version of both parts (tests, notebook smoke runs)."""
  c = get_config()
  c.chunk = 5
  c.progress = False
  c.widths.widths = (16, 64)
  c.widths.depths = (2,)
  c.widths.num_classes = 3
  c.widths.points_per_class = 4
  c.widths.input_dim = 6
  c.widths.num_tuples = 8
  c.widths.num_negatives = 2
  c.widths.out_dim = 3
  c.widths.steps = 10
  c.negatives.negatives = (2,)
  c.negatives.width = 16
  c.negatives.out_dim = 4
  c.negatives.steps = 5
  c.negatives.train_points = 60
  c.negatives.train_tuples = 40
  c.negatives.bound_tuples = 10
  c.negatives.synthetic_classes = 4
  c.negatives.synthetic_points_per_class = 12
  c.negatives.synthetic_dim = 6
  return c


def check_config(c: ml_collections.ConfigDict) -> None:
  """ValueError naming the field for an unknown part, parameterisation or dataset, a count
  that is not an integer >= 1 or a learning rate that is not > 0."""
  for field, values, allowed in (("parts", c.parts, PARTS),
                                 ("widths.parameterisation", (c.widths.parameterisation,),
                                  PARAMETERISATIONS),
                                 ("negatives.datasets", c.negatives.datasets, DATASETS)):
    for value in values:
      if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; valid choices: {', '.join(allowed)}")
  for field, values in (("chunk", (c.chunk,)), ("widths.widths", c.widths.widths),
                        ("widths.depths", c.widths.depths), ("widths.steps", (c.widths.steps,)),
                        ("negatives.negatives", c.negatives.negatives),
                        ("negatives.steps", (c.negatives.steps,))):
    for value in values:
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
  for field, value in (("widths.learning_rate", c.widths.learning_rate),
                       ("negatives.learning_rate", c.negatives.learning_rate)):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise ValueError(f"{field} must be a finite number > 0, got {value!r}")


# ----------------------------------------------------------------------------- shared pieces


def curl_objective(apply_fn, tuples: theory.Tuples):
  """`params, x -> (logistic CURL loss, (training error, mean output norm))` on fixed tuples."""
  anchor, positive, negatives = (jnp.asarray(a) for a in tuples)

  def objective(params, x):
    f = apply_fn(params, x)
    v = curl.curl_scores(f[anchor], f[positive], f[negatives])
    error = jnp.mean(jnp.any(v <= 0, axis=1))
    return curl.logistic_loss(v, LOGISTIC_BASE), (error, jnp.mean(jnp.linalg.norm(f, axis=1)))

  return objective


def gradient_descent(objective, params, x, *, learning_rate: float, steps: int, chunk: int,
                     bar=None):
  """Full-batch GD `θ ← θ − η ∇L(θ)` in jitted `lax.scan` chunks (`contrax.mi.chunked_scan`).

  Returns the final parameters and per-iteration NumPy arrays `loss, error, output_norm` of
  length `steps + 1` (entry t is measured at θ_t, before step t).
  """
  def make_step(x):
    def step(p, _):
      (loss, (error, norm)), grads = jax.value_and_grad(objective, has_aux=True)(p, x)
      return jax.tree.map(lambda w, g: w - learning_rate * g, p, grads), (loss, error, norm)
    return step

  # Full-batch GD draws nothing: the scan's per-step keys are placeholders giving its length.
  params, traces = mi.chunked_scan(make_step, params, np.zeros(steps), consts=x, chunk=chunk,
                                   on_chunk=bar.update if bar is not None else None)
  final = jax.jit(objective)(params, x)
  loss_t, error_t, norm_t = (np.append(trace, np.asarray(last))
                             for trace, last in zip(traces, (final[0], *final[1])))
  return params, loss_t, error_t, norm_t


def loglog_slope(x, y) -> float:
  """Least-squares slope of log y against log x."""
  return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def _write_jsonl(path: str, rows) -> None:
  with open(path, "a") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------- (a) widths


def width_data(c: ml_collections.ConfigDict, seed: int):
  """Points `[n, input_dim]` on the sphere and fixed collision-free tuples."""
  rng = np.random.default_rng(seed)
  x, labels = theory.latent_class_points(rng, c.num_classes, c.points_per_class, c.input_dim,
                                         spread=c.spread, last_coordinate=c.last_coordinate)
  tuples = theory.sample_tuples(rng, labels, c.num_tuples, c.num_negatives,
                                collision_free=True)
  return jnp.asarray(x), tuples


def _width_model(c, width: int, depth: int):
  if c.parameterisation == "ntk":
    return models.NTKMLP(width=width, depth=depth, out_dim=c.out_dim), c.learning_rate
  return models.AllenZhuMLP(width=width, depth=depth, out_dim=c.out_dim), c.learning_rate / width


def run_width(config, x, tuples, width: int, depth: int, key: jax.Array) -> dict:
  """One GD run of (a): traces and lazy-regime diagnostics."""
  c = config.widths
  model, learning_rate = _width_model(c, width, depth)
  variables = jax.jit(model.init)(key, x)
  apply_fn = lambda p, xx: model.apply({**variables, "params": p}, xx)
  start = time.perf_counter()
  theta_0 = ntk.layerwise_ntk(model, variables, x)
  with _study.progress_bar(c.steps, f"L={depth} m={width}", config.progress) as bar:
    params, loss, error, norm = gradient_descent(
        curl_objective(apply_fn, tuples), variables["params"], x, learning_rate=learning_rate,
        steps=c.steps, chunk=config.chunk, bar=bar)
  theta_t = ntk.layerwise_ntk(model, {**variables, "params": params}, x)
  movement = {k: float(v) for k, v in ntk.parameter_movement(params, variables["params"]).items()}
  zero = np.flatnonzero(error == 0)
  return {
      "depth": depth, "width": width, "learning_rate": learning_rate,
      "initial_loss": float(loss[0]), "final_loss": float(loss[-1]),
      "loss_ratio": float(loss[-1] / loss[0]), "initial_error": float(error[0]),
      "final_error": float(error[-1]),
      "first_zero_error_step": int(zero[0]) if zero.size else None,
      "initial_output_norm": float(norm[0]), "final_output_norm": float(norm[-1]),
      "movement": max(movement.values()), "movement_per_layer": movement,
      "kernel_drift": float(ntk.kernel_drift(theta_t, theta_0)),
      "lambda_min_0": float(ntk.min_eigenvalue(theta_0)),
      "lambda_min_T": float(ntk.min_eigenvalue(theta_t)),
      "seconds": time.perf_counter() - start,
      "trace": {"loss": loss.tolist(), "error": error.tolist(), "output_norm": norm.tolist()},
  }


def run_widths(config, workdir: str) -> dict:
  c = config.widths
  x, tuples = width_data(c, config.seed)
  key = jax.random.key(config.seed)
  runs = []
  for depth in c.depths:
    for width in c.widths:
      run = run_width(config, x, tuples, width, depth,
                      jax.random.fold_in(jax.random.fold_in(key, depth), width))
      runs.append(run)
      _write_jsonl(os.path.join(workdir, "metrics.jsonl"), (
          {"part": "widths", "depth": depth, "width": width, "step": t, "loss": l, "error": e,
           "output_norm": o}
          for t, (l, e, o) in enumerate(zip(*run["trace"].values()))))
  slopes = {}
  for depth in c.depths:
    rows = [r for r in runs if r["depth"] == depth]
    widths = [r["width"] for r in rows]
    slopes[depth] = {
        "movement_slope": loglog_slope(widths, [r["movement"] for r in rows]),
        "drift_slope": loglog_slope(widths, [r["kernel_drift"] for r in rows]),
        "drift_decreasing": bool(np.all(np.diff([r["kernel_drift"] for r in rows]) < 0)),
    }
  widest = [r for r in runs if r["width"] == max(c.widths)]
  result = {
      "n_points": int(x.shape[0]), "n_tuples": c.num_tuples, "steps": c.steps,
      "parameterisation": c.parameterisation, "runs": runs,
      "slopes": {str(d): s for d, s in slopes.items()},
      "checks": {
          "movement_slope_in_[-0.7,-0.3]": all(-0.7 <= s["movement_slope"] <= -0.3
                                               for s in slopes.values()),
          "kernel_drift_shrinks_with_width": all(s["drift_decreasing"] for s in slopes.values()),
          "widest_zero_error_and_loss_below_1pct": all(
              r["final_error"] == 0 and r["loss_ratio"] < 0.01 for r in widest),
      },
  }
  _plot_widths(workdir, result)
  return result


def _plot_widths(workdir: str, result: dict) -> None:
  runs = result["runs"]
  for depth in sorted({r["depth"] for r in runs}):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for r in (r for r in runs if r["depth"] == depth):
      steps = np.arange(len(r["trace"]["loss"]))
      axes[0].plot(steps, r["trace"]["loss"], label=f"m={r['width']}")
      axes[1].plot(steps, r["trace"]["error"], label=f"m={r['width']}")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training CURL loss (logistic, base 2)")
    axes[1].set_yscale("symlog", linthresh=1.0 / result["n_tuples"])
    axes[1].set_ylabel("training error (some v_i <= 0)")
    for ax in axes:
      ax.set_xlabel("gradient-descent iteration")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    fig.suptitle(f"depth L={depth}, {result['parameterisation']} parameterisation, "
                 f"lr={runs[0]['learning_rate'] if result['parameterisation'] == 'ntk' else 'lr/m'}")
    _study.save_figure(fig, os.path.join(workdir, f"widths_training_L{depth}.png"))

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
  for depth in sorted({r["depth"] for r in runs}):
    rows = [r for r in runs if r["depth"] == depth]
    widths = [r["width"] for r in rows]
    s = result["slopes"][str(depth)]
    axes[0].plot(widths, [r["movement"] for r in rows], "o-",
                 label=f"L={depth}, slope {s['movement_slope']:.2f}")
    axes[1].plot(widths, [r["kernel_drift"] for r in rows], "o-",
                 label=f"L={depth}, slope {s['drift_slope']:.2f}")
  ref = np.array(sorted({r["width"] for r in runs}), float)
  for ax, key in zip(axes, ("movement", "kernel_drift")):
    top = max(r[key] for r in runs if r["width"] == ref[0])
    ax.plot(ref, top * (ref / ref[0]) ** -0.5, "k--", lw=0.8, label="m^(-1/2)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width m")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  axes[0].set_ylabel("max_l ||W_l(T) - W_l(0)||_F / ||W_l(0)||_F")
  axes[1].set_ylabel("||Θ(T) - Θ(0)||_F / ||Θ(0)||_F")
  _study.save_figure(fig, os.path.join(workdir, "widths_lazy.png"))

  fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
  for depth in sorted({r["depth"] for r in runs}):
    rows = [r for r in runs if r["depth"] == depth]
    ax.plot([r["width"] for r in rows], [r["lambda_min_0"] for r in rows], "o-", label=f"L={depth}")
  ax.set_xscale("log")
  ax.set_xlabel("width m")
  ax.set_ylabel("λ_min(Θ(0))")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  _study.save_figure(fig, os.path.join(workdir, "widths_lambda_min.png"))


# ----------------------------------------------------------------------------- (b) negatives


def negatives_data(c: ml_collections.ConfigDict, name: str, seed: int):
  """`(x_train, y_train, x_eval, y_eval, ρ)` for one dataset of (b); points on the sphere."""
  rng = np.random.default_rng(seed)
  if name == "synthetic":
    x, y = theory.latent_class_points(rng, c.synthetic_classes, c.synthetic_points_per_class,
                                      c.synthetic_dim, spread=c.synthetic_spread,
                                      last_coordinate=c.last_coordinate)
    train = np.zeros(y.size, bool)
    for cls in range(c.synthetic_classes):
      members = np.flatnonzero(y == cls)
      train[rng.choice(members, size=members.size // 2, replace=False)] = True
    probs = (np.arange(c.synthetic_classes) + 1.0) ** -c.synthetic_imbalance
    return x[train], y[train], x[~train], y[~train], probs / probs.sum()
  dataset = data_lib.load("digits", seed=seed)
  images, y_train = dataset.train[np.arange(len(dataset.train))]
  eval_images, y_eval = dataset.test[np.arange(len(dataset.test))]
  flat = images.reshape(len(images), -1) / 255.0
  mean = flat.mean(axis=0)
  keep = rng.choice(len(flat), size=min(c.train_points, len(flat)), replace=False)
  x_train = theory.to_sphere(flat[keep] - mean, c.last_coordinate)
  x_eval = theory.to_sphere(eval_images.reshape(len(eval_images), -1) / 255.0 - mean,
                            c.last_coordinate)
  probs = np.bincount(y_eval, minlength=dataset.num_classes) / len(y_eval)
  return x_train, y_train[keep], x_eval, y_eval, probs


def run_negatives(config, workdir: str) -> dict:
  c = config.negatives
  rows = []
  for d_index, name in enumerate(c.datasets):
    x_train, y_train, x_eval, y_eval, probs = negatives_data(c, name, config.seed + d_index)
    for k in c.negatives:
      seed = config.seed * 1000 + 100 * d_index + k
      rng = np.random.default_rng(seed)
      tuples = theory.sample_tuples(rng, y_train, c.train_tuples, k, class_probs=probs)
      bound_tuples = theory.sample_bound_tuples(rng, y_eval, c.bound_tuples, k,
                                                class_probs=probs)
      model = models.NTKMLP(width=c.width, depth=c.depth, out_dim=c.out_dim)
      params_0 = jax.jit(model.init)(jax.random.key(seed), jnp.asarray(x_train))["params"]
      apply_fn = lambda p, xx, model=model: model.apply({"params": p}, xx)
      with _study.progress_bar(c.steps, f"{name} k={k}", config.progress) as bar:
        params, loss, _, _ = gradient_descent(
            curl_objective(apply_fn, tuples), params_0, jnp.asarray(x_train),
            learning_rate=c.learning_rate, steps=c.steps, chunk=config.chunk, bar=bar)
      for encoder, p in (("init", params_0), ("trained", params)):
        bound = theory.curl_bound(apply_fn(p, jnp.asarray(x_eval)), bound_tuples,
                                  base=LOGISTIC_BASE)
        rows.append({"dataset": name, "k": k, "encoder": encoder,
                     "train_loss": float(loss[0] if encoder == "init" else loss[-1]),
                     **bound})
  _write_jsonl(os.path.join(workdir, "metrics.jsonl"), ({"part": "negatives", **r} for r in rows))
  _plot_negatives(workdir, rows)
  return {"rows": rows, "checks": {"bound_holds_in_every_row": all(r["holds"] for r in rows)}}


def _plot_negatives(workdir: str, rows: list[dict]) -> None:
  for name in sorted({r["dataset"] for r in rows}):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for encoder, style in (("init", "--"), ("trained", "-")):
      sel = [r for r in rows if r["dataset"] == name and r["encoder"] == encoder]
      ks = [r["k"] for r in sel]
      axes[0].plot(ks, [r["lhs"] for r in sel], "o" + style, color="C0",
                   label=f"L^mu_sup,k ({encoder})")
      axes[0].plot(ks, [r["rhs"] for r in sel], "s" + style, color="C1",
                   label=f"(L_un - tau_k) / (1 - tau_k) ({encoder})")
      axes[1].plot(ks, [r["mean_classifier_accuracy"] for r in sel], "o" + style, color="C2",
                   label=f"mean-classifier accuracy ({encoder})")
    sel = [r for r in rows if r["dataset"] == name and r["encoder"] == "trained"]
    axes[1].plot([r["k"] for r in sel], [r["tau"] for r in sel], "k:", label="tau_k")
    for ax in axes:
      ax.set_xscale("log", base=2)
      ax.set_xlabel("negatives k")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("loss (base 2)")
    fig.suptitle(f"CURL bound, {name}")
    _study.save_figure(fig, os.path.join(workdir, f"negatives_{name}.png"))


# ----------------------------------------------------------------------------- report


def summary_markdown(summary: dict) -> str:
  lines = []
  if "widths" in summary:
    w = summary["widths"]
    lines += [f"(a) widths: {w['parameterisation']} parameterisation, {w['n_points']} points, "
              f"{w['n_tuples']} tuples, {w['steps']} GD steps",
              "",
              "| L | m | lr | loss(0) | loss(T)/loss(0) | error(T) | first step error=0 | "
              "‖f‖ 0→T | movement | kernel drift | λ_min(Θ(0)) | s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in w["runs"]:
      lines.append(
          f"| {r['depth']} | {r['width']} | {r['learning_rate']:.3g} | {r['initial_loss']:.3f} | "
          f"{r['loss_ratio']:.2e} | {r['final_error']:.3f} | {r['first_zero_error_step']} | "
          f"{r['initial_output_norm']:.2f}→{r['final_output_norm']:.2f} | {r['movement']:.4f} | "
          f"{r['kernel_drift']:.4f} | {r['lambda_min_0']:.4f} | {r['seconds']:.0f} |")
    lines.append("")
    for depth, s in w["slopes"].items():
      lines.append(f"- L={depth}: slope of movement vs width {s['movement_slope']:.3f}, "
                   f"of kernel drift {s['drift_slope']:.3f}")
    lines += [f"- {k}: {v}" for k, v in w["checks"].items()] + [""]
  if "negatives" in summary:
    lines += ["(b) negatives: bound L^μ_sup,k ≤ (L_un − τ_k ℓ_min)/(1 − τ_k), ℓ_min = 1",
              "",
              "| data | k | encoder | τ_k | L_un | L^μ_sup,k (lhs) | accuracy | rhs | holds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["negatives"]["rows"]:
      lines.append(f"| {r['dataset']} | {r['k']} | {r['encoder']} | {r['tau']:.3f} | "
                   f"{r['unsupervised_loss']:.4f} | {r['lhs']:.4f} | "
                   f"{r['mean_classifier_accuracy']:.3f} | {r['rhs']:.4f} | {r['holds']} |")
    lines += [""] + [f"- {k}: {v}" for k, v in summary["negatives"]["checks"].items()]
  return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  _study.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics):
    os.remove(metrics)
  start = time.perf_counter()
  summary = {}
  if "widths" in config.parts:
    summary["widths"] = run_widths(config, workdir)
  if "negatives" in config.parts:
    summary["negatives"] = run_negatives(config, workdir)
  summary["seconds"] = time.perf_counter() - start
  summary["device"] = f"{jax.default_backend()} x{jax.device_count()}, {os.cpu_count()} CPUs"
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(summary_markdown(summary))
  compact = json.loads(json.dumps(summary))
  for r in compact.get("widths", {}).get("runs", []):
    r.pop("trace")
  _study.write_json(os.path.join(workdir, "summary.json"), compact)
  return summary


def run_and_print(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`run`, then the summary tables, the total time and the run directory."""
  summary = run(config, workdir)
  print(summary_markdown(summary))
  print(f"total {summary['seconds']:.0f} s; run directory: {os.path.abspath(workdir)}")
  return summary


if __name__ == "__main__":
  _study.main(get_config, run_and_print)
