"""Generalisation diagnostics for SimCLR and Barlow Twins under different augmentations
(Huang, Yi & Zhao 2023, Tables 1–2 and Theorem 1).

Cells: method ∈ {simclr (NT-Xent), barlow (Barlow Twins)} × augmentation ∈ `augmentations`
(crop; crop+flip; crop+jitter; crop+blur+gray+jitter; all five), plus a colour-strength sweep
s ∈ `strengths` on crop+jitter (SimCLR only, as in the paper's Table 2; `strength_methods`),
each for `seeds` (≥ 2) seeds, via `contrax.train.pretrain` with the same data, encoder,
optimiser, batch and number of steps. Each (method, augmentation) is a cell of
`experiments/_study.py` (a loss preset and the augmentation), every cell of a seed on the same
loaded dataset; tables give mean ± sample std (ddof = 1) over the seeds. The strength-s augmentation is `augment.with_color_strength(
PRESETS["crop+jitter"], s)`, registered at import as the preset "crop+jitter@s<s>"
(s = 0.5 is the "crop+jitter" preset itself and reuses its runs).

Per run, on top of kNN and linear-probe test accuracy from `train.pretrain`, the diagnostics
of `contrax.theory` on the l2-normalised encoder features h (r = 1):
- class centres μ_k over `diag_images` training images × `num_views` views (view 0 is the
  un-augmented image), nearest-centre test error on un-augmented test features;
- L_align and R̂_ε (max over the S views, biased low) on `diag_images` test images;
- max_{k≠ℓ} μ_kᵀμ_ℓ against Theorem 1's threshold r²(1 − ρ_max − √(2ρ_max) − Δ_μ/2), with σ̂
  at `deltas[-1]`, ε = `eps` and L = the largest ratio ‖f(x_a) − f(x_b)‖ / ‖x_a − x_b‖ seen
  over the view pairs (a lower bound of the encoder's Lipschitz constant);
- 1 − σ̂(δ) at the two `deltas`, with d̂_A in pixel space (images in [0, 1]) from the S views of
  `diag_images` test images, greedy max-clique per class (our estimator).
Check of the bound's conclusion: NN-centre error vs (1 − σ̂(deltas[-1])) + R̂_ε.

Digits (the default) are 8×8 grayscale: flip, crop and blur act; colour jitter reduces to
brightness/contrast, and grayscale, saturation and hue do nothing. So only the geometric part
(and an intensity-jitter analogue of the strength sweep) of the paper's study applies there.

Command (every config field is a flag, e.g. `--config.steps=100 --config.seeds=0,1`):

    python experiments/generalization.py

Default budget: 26 runs of 300 steps at batch 256 on the MLP. Measured end to end: 7 min 47 s
wall, 590 s CPU (`/usr/bin/time`; part of it shared with a test run), within the ≤ 20 min target.

CIFAR-10 setting (image-folder subset, 9,000 / 1,000 stratified split, the CPU recipe's ConvNet
and optimiser, 1,500 steps of batch 128 per run; 16 runs: SimCLR and Barlow Twins × crop, all
five, and SimCLR's colour sweep, 2 seeds; ≈ 7-11 min per run; run in three parts, 38 min + 1 h
35 min + 37 min wall, partly sharing the CPU with another study; finished runs are reused):

    python experiments/generalization.py --config.data=folder:PATH/TO/cifar10-train-10k \\
        --config.model=convnet --config.methods="('simclr','barlow')" \\
        --config.augmentations="('crop','all')" \\
        --config.strengths=1,0.5,0.25,0.125 --config.seeds=0,1 \\
        --config.steps=1500 --config.batch_size=128 --config.loss.temperature=0.2 \\
        --config.learning_rate=2e-3 --config.warmup_steps=200 --config.projection_dim=128 \\
        --config.deltas=8.0,12.0 --config.eps=1.0 --workdir=runs/generalization_cifar

Result (kNN / linear probe on the 1,000 held-out images, mean ± std over 2 seeds):
- richer augmentation, SimCLR: crop 0.311 ± 0.010 / 0.417 vs all five 0.421 ± 0.027 / 0.488
  (+11.0 points kNN); Barlow Twins: crop 0.300 ± 0.001 / 0.412 vs all five 0.382 ± 0.032 /
  0.459 (+8.2 points);
- stronger colour jitter (crop + jitter at strength s, SimCLR): kNN s = ⅛ 0.341 ± 0.007, ¼
  0.367 ± 0.025, ½ 0.401 ± 0.032, 1 0.400 ± 0.026 (crop alone 0.311): higher up to s = ½, flat
  from ½ to 1;
- 1 − σ̂(δ = 12) smaller with richer / stronger augmentation: crop 0.733, all five 0.555;
  s = ⅛ 0.720 → s = 1 0.485;
- NN-centre error ≤ (1 − σ̂(12)) + R̂_ε in only 3 of 16 runs (errors 0.63-0.77 vs bounds
  0.49-0.74: R̂_ε ≈ 0 at ε = 1, and σ̂ from a greedy clique on 300 images is an estimate);
  Theorem 1's threshold is negative in every run.

Writes runs/generalization/ (or --workdir): one run directory runs/<method>_<augmentation>_seed<s>
per (method, augmentation, seed) (`train.pretrain_once`: a finished run is reused, so an
interrupted study resumes), config.json,
results.json, results.md (table), accuracy_vs_augmentation.png, error_vs_bound.png,
summary.json.

Result of the default command (digits, MLP, 300 steps of batch 256, seeds 0, 1; ε = 1.0,
δ ∈ {2, 3} in pixel space; full table in runs/generalization/results.md and the README):
- richer augmentation did NOT raise accuracy on digits: SimCLR kNN crop 0.962 ± 0.006 vs all
  five 0.946 ± 0.008 (linear 0.984 vs 0.981); Barlow crop 0.899 vs all 0.914 (+1.5 points);
- richer augmentation DID give smaller 1 − σ̂ at fixed δ: δ = 2: crop 0.613, all 0.503,
  crop+blur+gray+jitter 0.480; δ = 3: crop 0.067, all 0.013;
- stronger colour jitter did NOT raise accuracy (digits have no colour: brightness/contrast
  only): kNN s = 1 0.947 ± 0.013, s = ½ 0.959, s = ¼ 0.954, s = ⅛ 0.960;
- NN-centre error ≤ (1 − σ̂(3)) + R̂_ε in 24 of 26 runs; both failures are Barlow crop+flip
  (error 0.22 vs bound 0.135: R̂_ε is estimated from S = 4 views, biased low); Theorem 1's
  threshold stays negative (≈ −5 to −24), so its divergence condition never holds here.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import _study
from contrax import augment, theory, train

RICHNESS = ("crop", "crop+flip", "crop+jitter", "crop+blur+gray+jitter", "all")


def strength_preset(s: float) -> str:
  """Name of the crop+jitter preset at colour strength s (registered on first use)."""
  if float(s) == 0.5:
    return "crop+jitter"  # the preset's jitter (0.4, 0.4, 0.4, 0.1) is strength 0.5
  name = f"crop+jitter@s{float(s):g}"
  if name not in augment.PRESETS:
    augment.PRESETS[name] = augment.with_color_strength(augment.PRESETS["crop+jitter"], s)
  return name


def get_config() -> ml_collections.ConfigDict:
  c = train.default_config()
  c.name = "generalization"
  c.steps = 300
  c.batch_size = 256
  c.warmup_steps = 30
  c.log_every = 50
  c.eval_every = 0
  c.checkpoint_every = 0
  c.progress = False
  c.methods = ("simclr", "barlow")
  c.augmentations = RICHNESS
  c.strengths = (1.0, 0.5, 0.25, 0.125)
  c.strength_methods = ("simclr",)
  c.seeds = (0, 1)
  c.diag_images = 300      # train images for the centres and test images for the rest
  c.num_views = 4          # S, including the un-augmented image
  c.eps = 1.0              # ε of R_ε (unit-sphere features; at 0.5, R̂_ε ≈ 1 on digits)
  c.deltas = (2.0, 3.0)    # δ of σ̂ in pixel space (8×8 digits in [0, 1])
  return c


PRESET_OF = {"simclr": "ntxent", "barlow": "barlow"}


def cells(config) -> dict[str, dict]:
  """`<method>_<augmentation preset>` -> its cell (loss preset, augmentation), without
  duplicates, in a stable order."""
  pairs = [(m, a) for m in config.methods for a in config.augmentations]
  pairs += [(m, strength_preset(s)) for m in config.strength_methods for s in config.strengths]
  return {f"{m}_{a}": {"preset": PRESET_OF[m], "augmentation": a} for m, a in pairs}


def trained_encoder(run: ml_collections.ConfigDict, workdir: str, image_shape):
  """`apply(images) -> h` for the final parameters of a finished `train.pretrain` run."""
  model, variables = train.load_trained(workdir)
  apply = jax.jit(lambda x: model.apply(variables, x, method=type(model).encode))
  return lambda x: apply(augment.to_float(jnp.asarray(x)))


def lipschitz_lower_bound(view_feats: np.ndarray, views: np.ndarray) -> float:
  """max over samples and view pairs of ‖f(x_a) − f(x_b)‖ / ‖x_a − x_b‖."""
  flat = views.reshape(views.shape[0], views.shape[1], -1).astype(np.float64)
  best = 0.0
  for a in range(views.shape[0]):
    for b in range(a + 1, views.shape[0]):
      dx = np.linalg.norm(flat[a] - flat[b], axis=1)
      df = np.linalg.norm(view_feats[a] - view_feats[b], axis=1)
      ok = dx > 1e-9
      if ok.any():
        best = max(best, float(np.max(df[ok] / dx[ok])))
  return best


def diagnostics(config, run, workdir: str, dataset) -> dict:
  """The quantities of Huang, Yi & Zhao's Theorem 1 for one trained encoder (see the module
  docstring)."""
  encode = trained_encoder(run, workdir, dataset.train.image_shape)
  num_classes = dataset.num_classes
  key = jax.random.key(run.seed + 20_000)
  n_tr = min(config.diag_images, len(dataset.train))
  n_te = min(config.diag_images, len(dataset.test))
  tr_images, tr_labels = dataset.train[np.arange(n_tr)]
  te_images, te_labels = dataset.test[np.arange(n_te)]
  tr_labels, te_labels = np.asarray(tr_labels), np.asarray(te_labels)
  tr_views = theory.sample_views(run.augmentation, jax.random.fold_in(key, 0), tr_images,
                                 config.num_views)
  te_views = theory.sample_views(run.augmentation, jax.random.fold_in(key, 1), te_images,
                                 config.num_views)
  tr_feats = theory.view_features(encode, tr_views)
  te_feats = theory.view_features(encode, te_views)
  centres, p = theory.augmented_class_centres(tr_feats, tr_labels, num_classes)
  err = theory.nearest_centre_error(te_feats[0], te_labels, centres)
  l_align = theory.alignment_from_views(te_feats)
  r_eps = theory.r_epsilon(te_feats, config.eps)
  d_a = theory.augmented_distance_matrix(te_views)
  sig = {float(d): theory.sigma_hat(d_a, te_labels, float(d), num_classes) for d in config.deltas}
  delta = float(config.deltas[-1])
  sigma = sig[delta][0]
  lip = lipschitz_lower_bound(te_feats, te_views)
  deficit = theory.centre_deficit(centres)
  threshold = theory.divergence_threshold(sigma, delta, config.eps, lip, 1.0, r_eps,
                                          float(np.min(p[p > 0])), deficit)
  out = dict(nc_error=err, l_align=l_align, r_eps=r_eps, max_cross_centre=theory.max_cross_centre(
      centres), threshold=threshold, centre_deficit=deficit, lipschitz_lb=lip,
             bound=(1.0 - sigma) + r_eps)
  for d, (s, frac) in sig.items():
    out[f"one_minus_sigma@{d:g}"] = 1.0 - s
    out[f"one_minus_sigma_min@{d:g}"] = 1.0 - float(np.min(frac))
  out["bound_holds"] = bool(err <= out["bound"])
  out["divergence_condition"] = bool(out["max_cross_centre"] < threshold)
  return out


def metrics(config) -> dict[str, str]:
  d1, d2 = (f"{float(d):g}" for d in config.deltas)
  return {"knn_accuracy": "kNN", "linear_accuracy": "linear", "nc_error": "NN-centre err",
          "l_align": "L_align", "r_eps": "R̂_ε", "max_cross_centre": "max μ_kᵀμ_ℓ",
          "threshold": "threshold", f"one_minus_sigma@{d1}": f"1−σ̂(δ={d1})",
          f"one_minus_sigma@{d2}": f"1−σ̂(δ={d2})", "bound": "(1−σ̂)+R̂_ε",
          "bound_holds": "fraction err ≤ bound"}


def plot(stats: dict, records: list[dict], config, workdir: str) -> None:
  import matplotlib.figure

  fig = matplotlib.figure.Figure(figsize=(11, 4), dpi=110)
  axes = fig.subplots(1, 2)
  ax = axes[0]
  for method in config.methods:
    xs = [a for a in config.augmentations if f"{method}_{a}" in stats]
    ax.errorbar(range(len(xs)), [stats[f"{method}_{a}"]["knn_accuracy"][0] for a in xs],
                yerr=[_study.errorbar_std(stats[f"{method}_{a}"]["knn_accuracy"]) for a in xs], marker="o",
                capsize=3, label=method)
    ax.set_xticks(range(len(xs)), xs, rotation=20, fontsize=7)
  ax.set_ylabel("kNN test accuracy")
  ax.set_title("accuracy vs augmentation richness")
  ax.legend()
  ax = axes[1]
  for method in config.strength_methods:
    ss = [s for s in config.strengths if f"{method}_{strength_preset(s)}" in stats]
    ax.errorbar(ss, [stats[f"{method}_{strength_preset(s)}"]["knn_accuracy"][0] for s in ss],
                yerr=[_study.errorbar_std(stats[f"{method}_{strength_preset(s)}"]["knn_accuracy"])
                      for s in ss],
                marker="o", capsize=3, label=method)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("colour strength s (crop+jitter)")
  ax.set_ylabel("kNN test accuracy")
  ax.set_title("accuracy vs jitter strength")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "accuracy_vs_augmentation.png"))

  fig = matplotlib.figure.Figure(figsize=(5, 4.5), dpi=110)
  ax = fig.subplots()
  for method in config.methods:
    rs = [r for r in records if r["cell"].partition("_")[0] == method]
    ax.scatter([r["bound"] for r in rs], [r["nc_error"] for r in rs], label=method, s=18)
  top = max([r["bound"] for r in records] + [r["nc_error"] for r in records] + [0.1])
  ax.plot([0, top], [0, top], "k--", lw=1, label="error = bound")
  ax.set_xlabel(f"(1 − σ̂(δ={float(config.deltas[-1]):g})) + R̂_ε")
  ax.set_ylabel("nearest-centre test error")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "error_vs_bound.png"))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if len(config.deltas) != 2:
    raise ValueError(f"deltas must hold two values, got {config.deltas!r}")

  def run_one(run, run_dir, dataset):
    summary = _study.pretrain(run, run_dir, dataset)
    return dict(knn_accuracy=summary["knn_accuracy"], linear_accuracy=summary["linear_accuracy"],
                wall_seconds=summary["wall_seconds"],
                **diagnostics(config, run, run_dir, dataset))

  title = (f"{config.data}, {config.model}, {config.steps} steps of batch {config.batch_size}; "
           f"diagnostics on {config.diag_images} images × S = {config.num_views} views, "
           f"ε = {config.eps}")
  return _study.run(config, workdir, cells=cells(config), run_one=run_one,
                    metrics=metrics(config), title=title,
                    plot=lambda stats, records, workdir: plot(stats, records, config, workdir))


if __name__ == "__main__":
  _study.main(get_config, run)
