"""α-CL studies (Tian 2022, arXiv 2201.12680): the max player is PCA on
`C_α = Σ_i Σ_{j≠i,i+} α_ij [(x_i − x_j)(x_i − x_j)ᵀ − (x_i − x_i+)(x_i − x_i+)ᵀ]`,
ReLU fixed points have higher rank, and α-CL losses against InfoNCE.

(a) linear: deep linear networks `z = W_L ⋯ W_1 x` (depths 2–4), α frozen (InfoNCE's α of the
    network's outputs at initialisation, uniform 1/N, or random positive), projected gradient
    ascent on the energy `E_α = Σ_ij α_ij (d²_ij − d²_i)` (unnormalised features) with every
    layer rescaled to unit Frobenius norm after each step. Theory
    (`contrax.theory.contrastive_covariance`): `max E_α = λ_max(C_α)/2`, every layer rank 1,
    the product's input direction = C_α's top eigenvector. Reported per (α, depth, seed): the
    final energy and its relative gap to λ_max/2, σ₂/σ₁ of every layer, |cos| with the top
    eigenvector; C_α's spectrum per α (seed 0).
(b) relu: a two-layer ReLU network `W_2 relu(W_1 x)` under the same player (uniform α) vs the
    two-layer linear network `W_2 W_1 x`, on synthetic inputs `x = a_m s e_m + noise` (each
    sample excites one coordinate direction m, sign s = ±1, magnitudes `a_m = decay^m`
    decaying). Hidden units are unit-norm (rows of W_1); the top layer is fixed (`identity`)
    or trained with unit Frobenius norm (`trained`). Reported: the effective rank (Roy &
    Vetterli: exp of the entropy of normalised singular values) of the output-weighted first
    layer and the number of input directions e_m covered by its units (units of norm ≥ 10%
    of the largest, |cos| ≥ 0.9 with some e_m). With a Frobenius-normalised first layer
    (the player of (a)) the units compete for one norm budget and the strongest direction
    wins in both networks (rank ≈ 1: checked while building this study, not a default case).
(c) losses: α-CL variants (cells of `experiments/_study.py`: a loss preset plus overrides,
    every variant of a seed on the same loaded dataset) via `contrax.train.pretrain` — α-CL-direct with p ∈ {2, 4, 8}
    (ε_α = 0), inverse power (k = 1, t' = 1), sparsemax, entropy — against InfoNCE (NT-Xent),
    same encoder, optimiser, budget and seeds; kNN and linear-probe test accuracy mean ± sample
    std (ddof = 1) over the seeds, and each variant minus InfoNCE of the same seed.
    Note: the entropy player's α is `softmax_j(−d²_ij/t)`, which *is* α-CL-direct with p = 2,
    ε_α = 0; the two rows differ only by floating-point rounding.

Command (every config field is a flag, e.g. `--config.parts=linear,relu` or
`--config.losses.steps=300`):

    python experiments/alpha_cl.py

CIFAR-10 setting of (c) (image-folder subset, 9,000 / 1,000 stratified split; the CPU recipe's
ConvNet, SimCLR augmentations, temperature, AdamW rate and projection dimension, but 500 steps
of batch 128 per run, warm-up 50; 21 runs, 1 h 26 min wall on the 2-core CPU, sharing it with
one other training job; a finished run is reused, so an interrupted study resumes):

    python experiments/alpha_cl.py --config.parts=losses \\
        --config.losses.data=folder:PATH/TO/cifar10-train-10k --config.losses.model=convnet \\
        --config.losses.augmentation=simclr --config.losses.steps=500 \\
        --config.losses.batch_size=128 --config.losses.loss.temperature=0.2 \\
        --config.losses.learning_rate=2e-3 --config.losses.projection_dim=128 \\
        --workdir=runs/alpha_cl_cifar

Result (kNN / linear probe on the 1,000 held-out images, mean ± std over seeds 0-2; the
random-init ConvNet gives 0.275 / 0.364 on seed 0's split): InfoNCE 0.399 ± 0.028 /
0.462 ± 0.002; direct p = 2 0.400 ± 0.027 / 0.460 ± 0.014; p = 4 0.401 ± 0.025 /
0.460 ± 0.024; p = 8 0.402 ± 0.032 / 0.460 ± 0.001; inverse power 0.365 ± 0.018 /
0.438 ± 0.009; sparsemax 0.337 ± 0.030 / 0.402 ± 0.008; entropy 0.401 ± 0.028 /
0.469 ± 0.014. The seed spread is mostly shared across losses (seed 0 is ≈ 6 points below
seeds 1-2 for every loss), so paired by seed: p = 2 − InfoNCE kNN +0.003 / −0.003 / +0.004,
p = 4 +0.007 / −0.005 / +0.005 (no difference), inverse power −1.6 to −5.4 points and
sparsemax −4.9 to −7.7 points in every seed.

Measured: the default command, end to end on the quiet 2-core CPU: 8 min 25 s wall, 780 s
CPU (`/usr/bin/time`), within the ≤ 20 min target.
- (a): max relative gap to λ_max/2 = 6.4e-7, max σ₂/σ₁ over every layer = 6.3e-8, min |cos|
  = 0.99999 for all α ∈ {infonce, uniform, random}, depths 2–4, 5 seeds; C_α has 2
  negative eigenvalues (of 16) for each α (seed 0): it is indefinite.
- (b) identity top: ReLU effective rank 1.84–2.36, covering 1–2 input directions (mean 1.8),
  linear 1.000 (1 direction) for every seed; trained top: ReLU 1.39–1.84 (units are
  mixtures: mean 1.2 directions at |cos| ≥ 0.9), linear 1.000 — rank > 1 in every seed, but
  below the 1.5 threshold of `claims['trained']['holds']` in two seeds.
- (c) (digits, MLP, 500 steps of batch 256, t = 0.5, AdamW lr 1e-3, seeds 0–2), kNN /
  linear-probe test accuracy, mean ± std:

      infonce        0.9563 ± 0.0118   0.9837 ± 0.0042
      direct_p2      0.9563 ± 0.0118   0.9859 ± 0.0046
      direct_p4      0.9607 ± 0.0093   0.9852 ± 0.0010
      direct_p8      0.9593 ± 0.0064   0.9867 ± 0.0031
      inverse_power  0.9489 ± 0.0127   0.9859 ± 0.0055
      sparsemax      0.9481 ± 0.0121   0.9785 ± 0.0021
      entropy        0.9585 ± 0.0093   0.9867 ± 0.0031

  p = 2 matches InfoNCE (identical kNN, linear within 0.2 points); p = 4 is +0.4 points kNN
  and +0.15 points linear probe over InfoNCE, both within the seed spread; sparsemax is
  the weakest (−0.8 kNN, −0.5 linear).

Writes runs/alpha_cl/ (or --workdir): config.json, linear.json, linear_energy.png,
linear_spectrum.png, relu.json, relu_erank.png, losses.json, losses/ (the study runner's
files: runs/<variant>_seed<seed>/, each a `train.pretrain_once` run directory, results.json,
results.md, summary.json), losses_accuracy.png, summary.md, summary.json.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

import _study
from contrax import _checks, objectives, theory, train
from contrax.losses import alpha_cl

import matplotlib.pyplot as plt

PARTS = ("linear", "relu", "losses")
ALPHAS = ("infonce", "uniform", "random")
# variant name -> its cell: a loss preset and config overrides
VARIANTS = {
    "infonce": {"preset": "ntxent"},
    "direct_p2": {"preset": "alpha_direct", "weighting.alpha_direct.p": 2.0},
    "direct_p4": {"preset": "alpha_direct", "weighting.alpha_direct.p": 4.0},
    "direct_p8": {"preset": "alpha_direct", "weighting.alpha_direct.p": 8.0},
    "inverse_power": {"preset": "alpha_inverse_power"},
    "sparsemax": {"preset": "alpha_sparsemax"},
    "entropy": {"preset": "alpha_entropy"},
}
REFERENCE = "infonce"
METRICS = {"knn_accuracy": "kNN acc.", "linear_accuracy": "linear probe"}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "alpha_cl"
  c.parts = PARTS
  c.progress = True

  a = c.linear = ml_collections.ConfigDict()
  a.seeds = 5
  a.depths = (2, 3, 4)
  a.alphas = ALPHAS
  a.batch = 32            # B images, 2B stacked rows
  a.input_dim = 16
  a.hidden_dim = 16
  a.out_dim = 8
  a.view_noise = 0.3      # second view = first + view_noise · N(0, I) ...
  a.strong_noise = 2.0    # ... except the last `strong_noise_dims` coordinates, perturbed by
  a.strong_noise_dims = 4  # strong_noise · N(0, 1): augmentation-dominated, C_α < 0 there
  a.temperature = 0.5     # InfoNCE's α
  a.steps = 2000
  a.learning_rate = 1.0   # in units of 1/‖C_α‖₂ (scale-free)

  b = c.relu = ml_collections.ConfigDict()
  b.seeds = 5
  b.batch = 64
  b.input_dim = 8
  b.hidden_dim = 32
  b.out_dim = 8
  b.decay = 0.8           # a_m = decay^m
  b.noise = 0.05          # isotropic noise on every sample
  b.view_noise = 0.05     # second view = first + view_noise · N(0, I)
  b.alpha = "uniform"
  b.tops = TOPS           # top layer: fixed identity / trained (see run_relu)
  b.temperature = 0.5
  b.steps = 4000
  b.learning_rate = 1.0   # in units of 1/‖C_α‖₂ (× h for the fixed identity top)

  l = c.losses = train.default_config()  # digits, MLP, batch 256, t = 0.5, AdamW 1e-3
  l.name = "alpha_cl_losses"
  l.variants = tuple(VARIANTS)
  l.seeds = (0, 1, 2)
  l.steps = 500
  l.warmup_steps = 50  # at most steps / 10 (fewer for shorter runs)
  l.eval_every = 0
  l.checkpoint_every = 0
  l.progress = False
  return c


# ----------------------------------------------------------------------------- (a) linear


def _normalise(ws):
  return [w / jnp.linalg.norm(w) for w in ws]


def _product(ws):
  out = ws[0]
  for w in ws[1:]:
    out = w @ out
  return out


@functools.partial(jax.jit, static_argnames=("steps", "relu"))
def ascend(ws, x1, x2, alpha, lr, *, steps: int, relu: bool = False):
  """Projected gradient ascent on `E_α` of `W_L ⋯ W_1 x` (or `W_2 relu(W_1 x)`), every layer
  renormalised to unit Frobenius norm after each step; one `lax.scan`. Returns
  `(layers, energy per step)`."""
  def features(ws, x):
    if relu:
      return jax.nn.relu(x @ ws[0].T) @ ws[1].T
    return x @ _product(ws).T

  def energy(ws):
    return theory.alpha_energy(features(ws, x1), features(ws, x2), alpha)

  def step(ws, _):
    e, g = jax.value_and_grad(energy)(ws)
    return _normalise([w + lr * gw for w, gw in zip(ws, g)]), e

  ws, trace = jax.lax.scan(step, _normalise(list(ws)), None, length=steps)
  return ws, jnp.append(trace, energy(ws))


def _views(key, batch, dim, view_noise, strong_noise=0.0, strong_dims=0):
  """Gaussian inputs and a second view with per-coordinate noise: `view_noise`, except
  `strong_noise` on the last `strong_dims` coordinates."""
  k1, k2 = jax.random.split(key)
  x1 = jax.random.normal(k1, (batch, dim))
  scale = jnp.where(jnp.arange(dim) >= dim - strong_dims, strong_noise, view_noise)
  return x1, x1 + scale * jax.random.normal(k2, (batch, dim))


def _alpha(kind, key, z1, z2, temperature):
  n = 2 * z1.shape[0]
  if kind == "infonce":
    return alpha_cl.infonce_alpha(z1, z2, temperature=temperature)
  if kind == "uniform":
    return jnp.full((n, n), 1.0 / (n - 2))
  return jax.random.uniform(key, (n, n), minval=0.1, maxval=1.0)


def _init_layers(key, dims):
  keys = jax.random.split(key, len(dims) - 1)
  return [jax.random.normal(k, (dims[i + 1], dims[i])) for i, k in enumerate(keys)]


def _sv_ratio(w):
  s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
  return float(s[1] / s[0])


def run_linear(cfg: ml_collections.ConfigDict, progress: bool = True) -> dict:
  """Part (a); returns `{"runs": [...], "spectra": {alpha: eigenvalues}, "claims": {...}}`."""
  for name in ("seeds", "batch", "input_dim", "hidden_dim", "out_dim", "steps"):
    _checks.positive_int(f"linear.{name}", cfg[name])
  for d in cfg.depths:
    if int(d) < 1:
      raise ValueError(f"linear.depths must be >= 1, got {tuple(cfg.depths)}")
  for kind in cfg.alphas:
    _checks.choice("linear.alphas", kind, ALPHAS)
  runs, spectra = [], {}
  cases = [(k, d, s) for k in cfg.alphas for d in cfg.depths for s in range(cfg.seeds)]
  for kind, depth, seed in tqdm(cases, desc="(a) linear", disable=not progress):
    key = jax.random.key(seed)
    k_data, k_init, k_alpha = jax.random.split(key, 3)
    x1, x2 = _views(k_data, cfg.batch, cfg.input_dim, cfg.view_noise, cfg.strong_noise,
                    cfg.strong_noise_dims)
    dims = [cfg.input_dim] + [cfg.hidden_dim] * (depth - 1) + [cfg.out_dim]
    ws0 = _normalise(_init_layers(k_init, dims))
    w0 = _product(ws0)
    alpha = _alpha(kind, k_alpha, x1 @ w0.T, x2 @ w0.T, cfg.temperature)
    cov = np.asarray(theory.contrastive_covariance(x1, x2, alpha), np.float64)
    eig, vec = np.linalg.eigh(cov)
    scale = float(np.max(np.abs(eig)))
    ws, trace = ascend(ws0, x1, x2, alpha, cfg.learning_rate / scale, steps=cfg.steps)
    top = np.linalg.svd(np.asarray(_product(ws), np.float64))[2][0]
    final = float(trace[-1])
    target = 0.5 * float(eig[-1])
    runs.append({
        "alpha": kind, "depth": depth, "seed": seed, "energy": final, "lambda_max_half": target,
        "relative_gap": abs(final - target) / abs(target),
        "sv_ratios": [_sv_ratio(w) for w in ws],
        "cos_top": float(abs(top @ vec[:, -1])),
        "trace": np.asarray(trace[:: max(1, cfg.steps // 200)], np.float64).tolist()})
    if seed == 0:
      spectra.setdefault(kind, {})[depth] = eig[::-1].tolist()
  claims = {
      "max_relative_gap": max(r["relative_gap"] for r in runs),
      "max_sv_ratio": max(max(r["sv_ratios"]) for r in runs),
      "min_cos_top": min(r["cos_top"] for r in runs)}
  claims["holds"] = bool(claims["max_relative_gap"] < 1e-4 and claims["max_sv_ratio"] < 1e-3
                         and claims["min_cos_top"] > 0.999)
  return {"runs": runs, "spectra": spectra, "claims": claims}


# ----------------------------------------------------------------------------- (b) relu


def decaying_directions(key, batch, dim, *, decay, noise, view_noise):
  """Two views of `x = a_m s e_m + noise · N(0, I)`, m uniform over the `dim` coordinate
  directions, s = ±1, `a_m = decay^m`; the second view adds `view_noise · N(0, I)`."""
  k_m, k_s, k_n, k_v = jax.random.split(key, 4)
  m = jax.random.randint(k_m, (batch,), 0, dim)
  s = jnp.where(jax.random.bernoulli(k_s, 0.5, (batch,)), 1.0, -1.0)
  x1 = (jax.nn.one_hot(m, dim) * (decay ** m * s)[:, None]
        + noise * jax.random.normal(k_n, (batch, dim)))
  return x1, x1 + view_noise * jax.random.normal(k_v, (batch, dim))


def effective_rank(w) -> float:
  """Roy & Vetterli (2007): `exp(−Σ p_k log p_k)`, `p = σ / Σσ` (σ the singular values)."""
  s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
  p = s / s.sum()
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def covered_directions(w1, *, min_norm: float = 0.1, min_cos: float = 0.9) -> int:
  """Number of coordinate directions e_m that some first-layer unit (row of `w1` with norm ≥
  `min_norm` × the largest) points along (|cos| ≥ `min_cos`)."""
  w1 = np.asarray(w1, np.float64)
  norms = np.linalg.norm(w1, axis=1)
  rows = w1[norms >= min_norm * norms.max()]
  cos = np.abs(rows) / np.linalg.norm(rows, axis=1, keepdims=True)
  return int(len({int(np.argmax(c)) for c in cos if c.max() >= min_cos}))


@functools.partial(jax.jit, static_argnames=("steps", "relu", "train_top"))
def ascend_two_layer(w1, w2, x1, x2, alpha, lr, *, steps: int, relu: bool, train_top: bool):
  """Projected gradient ascent on `E_α` of `W_2 σ(W_1 x)` (σ = ReLU or identity): every row
  (hidden unit) of W_1 renormalised to unit norm after each step; W_2 fixed, or trained and
  renormalised to unit Frobenius norm. Returns `(w1, w2, energy per step)`."""
  act = jax.nn.relu if relu else (lambda t: t)

  def energy(w1, w2):
    return theory.alpha_energy(act(x1 @ w1.T) @ w2.T, act(x2 @ w1.T) @ w2.T, alpha)

  rows = lambda w: w / jnp.linalg.norm(w, axis=1, keepdims=True)  # noqa: E731

  def step(carry, _):
    w1, w2 = carry
    e, (g1, g2) = jax.value_and_grad(energy, argnums=(0, 1))(w1, w2)
    w1 = rows(w1 + lr * g1)
    if train_top:
      w2 = w2 + lr * g2
      w2 = w2 / jnp.linalg.norm(w2)
    return (w1, w2), e

  (w1, w2), trace = jax.lax.scan(step, (rows(w1), w2), None, length=steps)
  return w1, w2, jnp.append(trace, energy(w1, w2))


TOPS = ("identity", "trained")


def run_relu(cfg: ml_collections.ConfigDict, progress: bool = True) -> dict:
  """Part (b): ReLU vs linear two-layer networks on `decaying_directions` inputs.

  First layer: unit-norm hidden units (rows), as in Tian's two-layer analysis, where each
  unit's fixed point is an eigenvector of its own (gated) contrastive covariance. Top layer:
  `identity` (fixed `I/√h`: the units decouple) or `trained` (Frobenius-normalised, ascended
  jointly). Effective rank and covered directions are taken of the *output-weighted* first
  layer `diag(‖W_2[:, k]‖) W_1` (a unit the output ignores does not count); the plain
  effective rank of W_1 is reported too.
  """
  for name in ("seeds", "batch", "input_dim", "hidden_dim", "out_dim", "steps"):
    _checks.positive_int(f"relu.{name}", cfg[name])
  _checks.in_range("relu.decay", cfg.decay, 0.0, 1.0)
  _checks.choice("relu.alpha", cfg.alpha, ALPHAS)
  for top in cfg.tops:
    _checks.choice("relu.tops", top, TOPS)
  runs = []
  cases = [(top, net, s) for top in cfg.tops for s in range(cfg.seeds) for net in ("linear", "relu")]
  for top, net, seed in tqdm(cases, desc="(b) relu", disable=not progress):
    k_data, k_init, k_alpha = jax.random.split(jax.random.key(seed), 3)
    x1, x2 = decaying_directions(k_data, cfg.batch, cfg.input_dim, decay=cfg.decay,
                                 noise=cfg.noise, view_noise=cfg.view_noise)
    h = cfg.hidden_dim
    w1 = jax.random.normal(k_init, (h, cfg.input_dim))
    if top == "identity":
      w2 = jnp.eye(h) / math.sqrt(h)
    else:
      w2 = jax.random.normal(jax.random.fold_in(k_init, 1), (cfg.out_dim, h))
      w2 = w2 / jnp.linalg.norm(w2)
    act = jax.nn.relu if net == "relu" else (lambda t: t)
    alpha = _alpha(cfg.alpha, k_alpha, act(x1 @ w1.T) @ w2.T, act(x2 @ w1.T) @ w2.T,
                   cfg.temperature)
    cov = np.asarray(theory.contrastive_covariance(x1, x2, alpha), np.float64)
    eig = np.linalg.eigvalsh(cov)
    lr = cfg.learning_rate / float(np.max(np.abs(eig))) * (h if top == "identity" else 1.0)
    w1, w2, trace = ascend_two_layer(w1, w2, x1, x2, alpha, lr, steps=cfg.steps,
                                     relu=net == "relu", train_top=top == "trained")
    weighted = np.asarray(w1) * np.linalg.norm(np.asarray(w2), axis=0)[:, None]
    runs.append({"top": top, "net": net, "seed": seed, "energy": float(trace[-1]),
                 "effective_rank": effective_rank(weighted),
                 "effective_rank_w1": effective_rank(w1),
                 "covered_directions": covered_directions(weighted),
                 "trace": np.asarray(trace[:: max(1, cfg.steps // 200)], np.float64).tolist()})
  claims = {}
  for top in cfg.tops:
    by = lambda net, k: [r[k] for r in runs if r["net"] == net and r["top"] == top]  # noqa
    claims[top] = {"linear_max_effective_rank": max(by("linear", "effective_rank")),
                   "relu_min_effective_rank": min(by("relu", "effective_rank")),
                   "linear_mean_covered": float(np.mean(by("linear", "covered_directions"))),
                   "relu_mean_covered": float(np.mean(by("relu", "covered_directions")))}
    claims[top]["holds"] = bool(claims[top]["relu_min_effective_rank"] > 1.5
                                and claims[top]["linear_max_effective_rank"] < 1.1)
  return {"runs": runs, "claims": claims}


# ----------------------------------------------------------------------------- (c) losses


def cells(cfg: ml_collections.ConfigDict) -> dict[str, dict]:
  """The study cells of part (c): `cfg.variants` of `VARIANTS`, each run named after it."""
  for variant in cfg.variants:
    _checks.choice("losses.variants", variant, sorted(VARIANTS))
  return {v: dict(VARIANTS[v], name=f"alpha_cl_{v}") for v in cfg.variants}


def _accuracies(run, run_dir: str, dataset) -> dict:
  summary = _study.pretrain(run, run_dir, dataset)
  return {"loss": objectives.describe(run), "knn_accuracy": summary["knn_accuracy"],
          "linear_accuracy": summary["linear_accuracy"], "wall_seconds": summary["wall_seconds"]}


def run_losses(cfg: ml_collections.ConfigDict, workdir: str, progress: bool = True) -> dict:
  """Part (c): every (variant, seed) through `train.pretrain` (the study runner in
  `workdir/losses`); mean ± sample std and, paired by seed, minus InfoNCE."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.warmup_steps = min(cfg.warmup_steps, cfg.steps // 10)
  cfg.log_every = min(cfg.log_every, cfg.steps)
  cfg.progress = progress
  study_dir = os.path.join(workdir, "losses")
  summary = _study.run(cfg, study_dir, cells=cells(cfg), run_one=_accuracies, metrics=METRICS,
                       reference=REFERENCE if REFERENCE in cfg.variants else None,
                       title="(c) α-CL losses vs InfoNCE")
  with open(os.path.join(study_dir, "results.json")) as f:
    runs = json.load(f)
  with open(os.path.join(study_dir, "results.md")) as f:
    text = f.read()
  return {"runs": runs, "table": summary["stats"], "markdown": text,
          "setting": {**{k: cfg[k] for k in ("data", "model", "augmentation", "steps",
                                             "batch_size", "learning_rate", "projection_dim",
                                             "seeds")},
                      "temperature": cfg.loss.temperature}}


# ----------------------------------------------------------------------------- reporting


def _plots(workdir, results):
  written = []
  if "linear" in results:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for r in results["linear"]["runs"]:
      if r["seed"] == 0:
        tr = np.asarray(r["trace"]) / r["lambda_max_half"]
        axes[0].plot(tr, label=f"{r['alpha']} L={r['depth']}")
    axes[0].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[0].set(xlabel="step (subsampled)", ylabel="E_α / (λ_max/2)", title="(a) energy, seed 0")
    axes[0].legend(fontsize=6)
    for kind, by_depth in results["linear"]["spectra"].items():
      eig = by_depth[min(by_depth)]
      axes[1].plot(np.asarray(eig) / max(abs(e) for e in eig), marker="o", ms=3, label=kind)
    axes[1].axhline(0.0, color="k", lw=0.8)
    axes[1].set(xlabel="index", ylabel="eigenvalue / max|eigenvalue|", title="spectrum of C_α")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, "linear.png")
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
  if "relu" in results:
    tops = sorted({r["top"] for r in results["relu"]["runs"]})
    fig, axes = plt.subplots(1, len(tops), figsize=(5 * len(tops), 3.6), dpi=110, squeeze=False)
    for ax, top in zip(axes[0], tops):
      for net, marker in (("linear", "s"), ("relu", "o")):
        rows = [r for r in results["relu"]["runs"] if r["net"] == net and r["top"] == top]
        ax.plot([r["seed"] for r in rows], [r["effective_rank"] for r in rows], marker=marker,
                ls="", label=f"{net}: effective rank")
        ax.plot([r["seed"] for r in rows], [r["covered_directions"] for r in rows],
                marker=marker, ls="", mfc="none", label=f"{net}: directions covered")
      ax.set(xlabel="seed", ylabel="count", title=f"(b) first layer, top = {top}")
      ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, "relu.png")
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
  if "losses" in results:
    table = results["losses"]["table"]
    names = list(table)
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    pos = np.arange(len(names))
    for off, metric in ((-0.2, "knn_accuracy"), (0.2, "linear_accuracy")):
      ax.bar(pos + off, [table[n][metric][0] for n in names], 0.4,
             yerr=[_study.errorbar_std(table[n][metric]) for n in names], label=metric)
    ax.set_xticks(pos, names, rotation=30, fontsize=7)
    ax.set_ylim(min(table[n]["knn_accuracy"][0] for n in names) - 0.1, 1.0)
    ax.set(ylabel="test accuracy", title="(c) α-CL variants vs InfoNCE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(workdir, "losses_accuracy.png")
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
  return written


def summary_markdown(results) -> str:
  lines = ["# α-CL studies", ""]
  if "linear" in results:
    lin = results["linear"]
    lines += ["## (a) deep linear network, max player", "",
              "| α | depth | seeds | max rel. gap to λ_max/2 | max σ₂/σ₁ (all layers) | min |cos| |",
              "|---|---|---|---|---|---|"]
    keys = sorted({(r["alpha"], r["depth"]) for r in lin["runs"]})
    for kind, depth in keys:
      rows = [r for r in lin["runs"] if r["alpha"] == kind and r["depth"] == depth]
      lines.append(f"| {kind} | {depth} | {len(rows)} | "
                   f"{max(r['relative_gap'] for r in rows):.2e} | "
                   f"{max(max(r['sv_ratios']) for r in rows):.2e} | "
                   f"{min(r['cos_top'] for r in rows):.6f} |")
    lines += ["", f"Claims (gap < 1e-4, σ₂/σ₁ < 1e-3, |cos| > 0.999): {lin['claims']}", "",
              "Eigenvalues of C_α (seed 0, smallest depth), descending:", ""]
    for kind, by_depth in lin["spectra"].items():
      eig = by_depth[min(by_depth)]
      lines.append(f"- {kind}: " + ", ".join(f"{e:.4g}" for e in eig))
    lines.append("")
  if "relu" in results:
    rel = results["relu"]
    lines += ["## (b) two-layer ReLU vs linear (unit-norm hidden units)", "",
              "| top layer | net | seed | eff. rank (output-weighted W₁) | eff. rank W₁ | "
              "directions covered | final energy |", "|---|---|---|---|---|---|---|"]
    for r in rel["runs"]:
      lines.append(f"| {r['top']} | {r['net']} | {r['seed']} | {r['effective_rank']:.3f} | "
                   f"{r['effective_rank_w1']:.3f} | {r['covered_directions']} | "
                   f"{r['energy']:.4g} |")
    lines += ["", f"Claims (ReLU min eff. rank > 1.5 and linear max < 1.1): {rel['claims']}", ""]
  if "losses" in results:
    los = results["losses"]
    lines += ["## (c) α-CL losses vs InfoNCE", "", f"Setting: {los['setting']}", "",
              los["markdown"]]
    wall = sum(r["wall_seconds"] for r in los["runs"])
    lines += ["", f"Total wall {wall:.0f} s over {len(los['runs'])} runs (training + evaluation).",
              ""]
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  for part in config.parts:
    _checks.choice("parts", part, PARTS)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2)
  results, timings = {}, {}
  for part, fn in (("linear", lambda: run_linear(config.linear, config.progress)),
                   ("relu", lambda: run_relu(config.relu, config.progress)),
                   ("losses", lambda: run_losses(config.losses, workdir, config.progress))):
    if part not in config.parts:
      continue
    cpu0, t0 = time.process_time(), time.time()
    results[part] = fn()
    timings[part] = {"wall_seconds": time.time() - t0, "cpu_seconds": time.process_time() - cpu0}
    with open(os.path.join(workdir, f"{part}.json"), "w") as f:
      json.dump(results[part], f, indent=1)
  plots = _plots(workdir, results)
  markdown = summary_markdown(results)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(markdown)
  summary = {part: {k: v for k, v in res.items() if k in ("claims", "table", "setting")}
             for part, res in results.items()}
  summary["timings"] = timings
  summary["load_average"] = os.getloadavg()
  summary["plots"] = plots
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(markdown)
  print(f"run directory: {os.path.abspath(workdir)}")
  return summary


if __name__ == "__main__":
  _study.main(get_config, run)
