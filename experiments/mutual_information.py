"""Mutual information done rigorously (Lee et al. 2024): four studies on known-MI tasks.

Lee et al. 2024's exact statements could not be read; the claims tested here and the settings
are our reconstruction, labelled as such in every output.

(a) staircase: critics trained on correlated Gaussians (dimension 20) whose true MI steps
    through 2, 4, 6, 8, 10 nats; every estimator (InfoNCE, NWJ, DV, MINE, JS, SMILE-1/5/∞)
    with every critic (separable, bilinear, concat) at batch 64 and 256. JS and SMILE(τ)
    share one JS-trained critic (SMILE trains with the JS gradient, Song & Ermon 2020) and
    differ in the readout. Table: mean ± std of the estimate over the last quarter of each
    level; plot: the classic staircase.
(b) small batch: a linear (then an MLP) encoder 16 → 4 trained with InfoNCE at batch
    B ∈ {2, 4, 16, 64, 256} on correlated Gaussians whose best 4-d linear features carry
    4.08 nats. Reports the training InfoNCE (≤ log B), a post-training estimate with a large
    evaluation batch (a fresh separable critic on the frozen features; and the trained
    critic itself), and the exact MI of linear features.
(c) MI as a measure: encoders trained on label-channel image pairs (digits, n bits, flip
    probability p) for several step counts and widths; the representation's MI estimated
    with the best estimator of (a) against the linear-probe accuracy on the bits, with the
    ceiling I(X1; X2) = n(1 − H_b(p)) bits.
(d) InfoMin toy: views of 4 task tiles and 4 nuisance tiles, of which k_t task bits and k_n
    nuisance bits are shared between the views (the rest are independent); probe accuracy
    on the task bits as each grows.

Command (defaults; every config field is a flag, e.g. `--config.parts=staircase` or
`--config.staircase.steps_per_level=200`; tuples as `--config.staircase.batch_sizes=64,256`,
several strings as a Python literal, `--config.parts="('staircase','measure')"`):

    python experiments/mutual_information.py

Writes runs/mutual_information/ (or --workdir): config.json, staircase.json, staircase.md,
staircase_b64.png, staircase_b256.png, small_batch.json, small_batch.md, small_batch.png,
measure.json, measure.png, infomin.json, infomin.png, summary.json.

Runtime of the default command on the 2-core CPU, measured while 5–8 other jobs shared it
(load average 10–17): 44 min wall, 8 min 53 s CPU (user + sys). CPU time bounds the wall
time on an idle 2-core machine, so the default run takes ≤ 9 minutes there (staircase ≈ 60 %,
of which the concat critic at batch 256 is most).

Result of the default command (seed 0; every number is in runs/mutual_information/):

(a) at true MI 6 nats and batch 256 (mean ± std over the last 100 steps of the level):
    InfoNCE saturates below log 256 = 5.55 with every critic (separable 4.46 ± 0.09,
    concat 4.45 ± 0.09, bilinear 3.85 ± 0.09). Within 15 % of the truth: SMILE-5 with the
    separable critic (6.14 ± 0.21) and NWJ (5.39 ± 0.32) and SMILE-5 (5.17 ± 0.15) with the
    concat critic. Best by RMSE over the levels (separable, batch 256): SMILE-5, which (c)
    then uses. Which estimator is best where (staircase.md, bold): separable critic:
    SMILE-5 from 4 nats on (SMILE-1 at 2 nats, and at 10 nats for batch 256); concat
    critic: DV from 4 nats on (MINE at 8 nats, batch 256), InfoNCE at 2 nats; bilinear
    critic `xᵀWy`: InfoNCE or NWJ at low MI, DV at high MI — but it cannot represent the
    Gaussian log ratio (its quadratic terms) and stays far below the truth with every
    estimator. With the separable
    critic at learning rate 1e-3, NWJ, MINE and the NWJ readout of JS diverge (exp of the
    unbounded dot-product scores): a documented failure, not averaged away (a side run at
    learning rate 2e-4, batch 64, kept them finite but far behind the truth after 400 steps
    per level). To *estimate* MI with these bounds, use `contrax.mi.estimate_mi`, which
    trains the critic with InfoNCE or JS and only reads the bound out.
(b) training estimate vs information carried (linear encoder, exact MI of the features):
    dot-product critic: B = 4 trains to an InfoNCE of 0.94 ≤ log 4 = 1.39 nats, yet its
    features carry 3.84 nats = 95 % of the 4.06 nats of the B = 256 encoder (our
    reference: 3.78 and 4.02). Negative-distance critic: B = 4 → 1.22 ≤ log 4, 3.55 nats =
    87 % of 4.08. The MLP encoder (MI estimated by a fresh separable critic, K = 4096,
    which reads 3.5–3.7 nats for the linear features of exact MI 4.06, so it is itself
    biased low by ≈ 0.4 nats) gives B = 4: 3.07 vs B = 256: 3.10 (dot) and 3.13 vs 2.98
    (distance): no measurable loss from the small batch.
(c) digits 3 vs 5, 4 bits, p = 0.1: ceiling I(X1; X2) = 1.47 nats. SMILE-5 on the
    representations rises with training and width (dim 8: 0.17 → 0.99 → 1.32 → 1.38 nats
    at 0, 20, 100, 500 steps; dim 1 saturates at 0.38–0.43) and tracks the probe accuracy
    on the bits (0.73 → 0.95 → 0.996 → 1.00 for dim 8; ≤ 0.64 for dim 1); every estimate
    stays below the ceiling.
(d) embedding dim 2 (training InfoNCE saturates at ≈ 1.16 nats whatever is shared): with no
    shared nuisance, task accuracy rises with the shared task bits (0.58, 0.63, 0.75, 0.79,
    0.76 for 0–4); with all 4 task bits shared, adding shared nuisance bits lowers it to
    0.50 at 4 nuisance bits, while the nuisance bits become decodable (0.49 → 0.79).
    Along "task bits first, then nuisance bits" the accuracy against I(V1; V2) is a
    reverse U (0.58 → 0.79 → 0.50): what the views share, not how much, sets the accuracy.
    Single seed; individual cells move by ±0.05.
(c) and (d) were measured with a scikit-learn logistic probe per bit; the script now probes
    with `contrax.evaluate.linear_probe` (same protocol: standardised features, L2 chosen on
    a stratified validation split), so a rerun may move individual accuracies slightly.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from contrax import data as data_lib
from contrax import evaluate, mi, models

import matplotlib.pyplot as plt

PARTS = ("staircase", "small_batch", "measure", "infomin")
RECONSTRUCTION_NOTE = ("Lee et al. 2024's exact statements could not be read; these studies and "
                       "the claims they test are our reconstruction.")
TRAINED_HEADS = ("infonce", "nwj", "dv", "mine", "js")  # js's critic also gives SMILE readouts


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "mutual_information"
  c.seed = 0
  c.parts = PARTS
  c.chunk = 50  # steps per jitted scan call (one compile per configuration)
  c.progress = True

  c.staircase = ml_collections.ConfigDict()
  c.staircase.levels_nats = (2.0, 4.0, 6.0, 8.0, 10.0)
  c.staircase.dim = 20
  c.staircase.batch_sizes = (64, 256)
  c.staircase.critics = ("separable", "bilinear", "concat")
  c.staircase.steps_per_level = 400
  c.staircase.tail_fraction = 0.25
  c.staircase.learning_rate = 1e-3
  c.staircase.hidden = 256
  c.staircase.embed_dim = 32
  c.staircase.concat_hidden = 64
  c.staircase.cubic = False

  c.small_batch = ml_collections.ConfigDict()
  c.small_batch.batch_sizes = (2, 4, 16, 64, 256)
  c.small_batch.encoders = ("linear", "mlp")
  c.small_batch.critics = ("dot", "distance")  # see pair_scores
  c.small_batch.dim = 16
  c.small_batch.features = 4
  c.small_batch.attainable_mi_nats = 4.08  # carried by the `features` strongest dimensions
  c.small_batch.weak_mi_nats = 0.25  # per remaining dimension
  c.small_batch.steps = 2000
  c.small_batch.learning_rate = 3e-3
  c.small_batch.mlp_hidden = 64
  c.small_batch.critic_batch = 512
  c.small_batch.critic_steps = 600
  c.small_batch.eval_batch = 4096
  c.small_batch.eval_repeats = 4

  c.measure = ml_collections.ConfigDict()
  c.measure.data = "digits"
  c.measure.classes = (3, 5)
  c.measure.num_bits = 4
  c.measure.flip_prob = 0.1
  c.measure.embed_dims = (1, 2, 8)
  c.measure.checkpoints = (0, 20, 100, 500)
  c.measure.batch_size = 128
  c.measure.learning_rate = 1e-3
  c.measure.hidden = 128
  c.measure.estimator = "auto"  # the best of (a) when it ran, else smile-5
  c.measure.critic_batch = 256
  c.measure.critic_steps = 500
  c.measure.probe_samples = 2000

  c.infomin = ml_collections.ConfigDict()
  c.infomin.data = "digits"
  c.infomin.classes = (3, 5)
  c.infomin.task_bits = 4
  c.infomin.nuisance_bits = 4
  c.infomin.embed_dim = 2
  c.infomin.steps = 600
  c.infomin.batch_size = 128
  c.infomin.learning_rate = 1e-3
  c.infomin.hidden = 64
  c.infomin.probe_samples = 2000
  return c


def tiny_config() -> ml_collections.ConfigDict:
  """A few-seconds version of every part (tests, notebook smoke runs)."""
  c = get_config()
  c.chunk = 10
  c.progress = False
  c.staircase.levels_nats = (1.0, 2.0)
  c.staircase.dim = 4
  c.staircase.batch_sizes = (16,)
  c.staircase.critics = ("separable",)
  c.staircase.steps_per_level = 20
  c.staircase.hidden = 16
  c.staircase.embed_dim = 8
  c.staircase.concat_hidden = 8
  c.small_batch.batch_sizes = (2, 8)
  c.small_batch.encoders = ("linear",)
  c.small_batch.dim = 6
  c.small_batch.features = 2
  c.small_batch.attainable_mi_nats = 2.0
  c.small_batch.steps = 20
  c.small_batch.mlp_hidden = 8
  c.small_batch.critic_batch = 32
  c.small_batch.critic_steps = 20
  c.small_batch.eval_batch = 64
  c.small_batch.eval_repeats = 1
  c.measure.num_bits = 2
  c.measure.embed_dims = (2,)
  c.measure.checkpoints = (0, 10)
  c.measure.batch_size = 16
  c.measure.hidden = 16
  c.measure.critic_batch = 16
  c.measure.critic_steps = 10
  c.measure.probe_samples = 100
  c.infomin.task_bits = 1
  c.infomin.nuisance_bits = 1
  c.infomin.steps = 10
  c.infomin.batch_size = 16
  c.infomin.hidden = 8
  c.infomin.probe_samples = 100
  return c


# ----------------------------------------------------------------------------- shared pieces


def _bar(config, total: int, desc: str):
  return tqdm(total=total, desc=desc, disable=not config.progress, leave=False)


def _chunked_scan(make_step: Callable) -> Callable:
  """`jit((carry, keys, xs, consts) -> lax.scan(make_step(consts), carry, (keys, xs)))`.

  Large arrays the step needs (image pools) travel in `consts` as arguments, so they are not
  baked into the compiled program as constants.
  """
  return jax.jit(lambda carry, keys, xs, consts: jax.lax.scan(make_step(consts), carry,
                                                              (keys, xs)))


def _run_chunks(scan: Callable, carry, keys: jax.Array, xs=None, consts=None, *, chunk: int,
                bar=None):
  """Run a `_chunked_scan` over `keys` (and per-step `xs`) in calls of `chunk` steps.

  Returns the final carry and the stacked per-step outputs (NumPy). One compile per chunk
  length (a shorter last chunk compiles once more); the bar advances once per call.
  """
  outputs = []
  num_steps = keys.shape[0]
  for start in range(0, num_steps, chunk):
    stop = min(start + chunk, num_steps)
    x = None if xs is None else jax.tree.map(lambda a: a[start:stop], xs)
    carry, out = scan(carry, keys[start:stop], x, consts)
    outputs.append(jax.tree.map(np.asarray, out))
    if bar is not None:
      bar.update(stop - start)
  stacked = jax.tree.map(lambda *a: np.concatenate(a), *outputs) if outputs else None
  return carry, stacked


def _mlp(hidden: int, features: int) -> nn.Module:
  """`Dense(hidden) → ReLU → Dense(features)`: an encoder of flat vectors."""
  return models.ProjectionHead(projection_dim=features, hidden_dim=hidden, batch_norm=False)


def _bit_probe_accuracy(train_features, train_bits, test_features, test_bits) -> float:
  """Mean over bits of the test accuracy of `contrax.evaluate.linear_probe` (standardised
  features, L2 chosen on a validation split of the training features) on each bit."""
  return float(np.mean([
      evaluate.linear_probe(train_features, train_bits[:, k], test_features, test_bits[:, k],
                            num_classes=2)["accuracy"] for k in range(train_bits.shape[1])]))


def _save_json(workdir: str, name: str, payload) -> str:
  path = os.path.join(workdir, name)
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, default=float)
  return path


# ----------------------------------------------------------------------------- (a) staircase


def run_staircase(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """(a): every estimator × critic × batch on the Gaussian MI staircase; table and plots."""
  c = config.staircase
  levels = [float(v) for v in c.levels_nats]
  rhos = np.repeat([mi.gaussian_correlation(v, c.dim) for v in levels], c.steps_per_level)
  truth = np.repeat(levels, c.steps_per_level)
  tail = max(1, int(round(c.tail_fraction * c.steps_per_level)))
  runs = [(critic, b) for b in c.batch_sizes for critic in c.critics]
  bar = _bar(config, len(runs) * len(rhos), "(a) staircase")
  traces, table = {}, []
  for run_index, (critic_name, batch) in enumerate(runs):
    critic = mi.make_critic(critic_name, embed_dim=c.embed_dim,
                            hidden_dim=c.concat_hidden if critic_name == "concat" else c.hidden)

    def sample(key, rho, batch=batch):
      return mi.correlated_gaussian(key, batch, jnp.full((c.dim,), rho), cubic=c.cubic)

    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), run_index)
    init, step = mi.critic_training(critic, TRAINED_HEADS, sample, optax.adam(c.learning_rate))
    keys = jax.random.split(jax.random.fold_in(key, 1), len(rhos))
    _, values = _run_chunks(_chunked_scan(lambda _, step=step: step), jax.jit(init)(key, rhos[0]),
                            keys, jnp.asarray(rhos, jnp.float32),
                            chunk=config.chunk, bar=bar)
    for estimator in mi.ESTIMATORS:
      trace = values[estimator]
      traces[(critic_name, batch, estimator)] = trace
      for i, level in enumerate(levels):
        window = trace[(i + 1) * c.steps_per_level - tail:(i + 1) * c.steps_per_level]
        mean, std = float(np.mean(window)), float(np.std(window))
        table.append(dict(critic=critic_name, batch_size=batch, estimator=estimator,
                          true_mi_nats=level, mean_nats=mean, std_nats=std,
                          rmse_nats=float(np.sqrt((mean - level)**2 + std**2)),
                          relative_error=float((mean - level) / level)))
  bar.close()
  result = dict(note=RECONSTRUCTION_NOTE, levels_nats=levels, dim=c.dim,
                steps_per_level=c.steps_per_level, tail_steps=tail, cubic=c.cubic,
                table=table, best_by_setting=_best_estimators(table),
                best_overall=_best_overall(table, max(c.batch_sizes)),
                targets=_staircase_targets(table))
  _save_json(workdir, "staircase.json", result)
  with open(os.path.join(workdir, "staircase.md"), "w") as f:
    f.write(staircase_markdown(result))
  for batch in c.batch_sizes:
    _plot_staircase(os.path.join(workdir, f"staircase_b{batch}.png"), traces, truth, batch,
                    c.critics)
  return result


def _best_estimators(table: list[dict]) -> list[dict]:
  """Per (critic, batch, level): the estimator with the smallest RMSE (bias² + variance)."""
  groups = {}
  for row in table:
    groups.setdefault((row["critic"], row["batch_size"], row["true_mi_nats"]), []).append(row)
  return [dict(critic=k[0], batch_size=k[1], true_mi_nats=k[2],
               estimator=min(rows, key=lambda r: np.nan_to_num(r["rmse_nats"], nan=np.inf))[
                   "estimator"])
          for k, rows in groups.items()]


def _best_overall(table: list[dict], batch_size: int, critic: str = "separable") -> str:
  """The estimator with the smallest mean RMSE over levels for `critic` at `batch_size`."""
  rows = [r for r in table if r["batch_size"] == batch_size and r["critic"] == critic]
  if not rows:
    rows = [r for r in table if r["batch_size"] == batch_size]
  scores = {}
  for r in rows:
    scores.setdefault(r["estimator"], []).append(r["rmse_nats"])
  finite = {e: float(np.mean(v)) for e, v in scores.items() if np.isfinite(np.mean(v))}
  return min(finite, key=finite.get) if finite else "smile-5"


def _staircase_targets(table: list[dict]) -> dict:
  """The issue's checks at true MI 6 nats and batch 256 (when that setting ran)."""
  rows = [r for r in table if r["true_mi_nats"] == 6.0 and r["batch_size"] == 256]
  if not rows:
    return {"checked": False, "why": "no run at true MI 6 nats and batch 256"}
  out = {"checked": True, "log_256": math.log(256)}
  for critic in sorted({r["critic"] for r in rows}):
    by = {r["estimator"]: r for r in rows if r["critic"] == critic}
    out[critic] = dict(
        infonce=[by["infonce"]["mean_nats"], by["infonce"]["std_nats"]],
        infonce_below_log_batch=bool(by["infonce"]["mean_nats"] < math.log(256)),
        nwj=[by["nwj"]["mean_nats"], by["nwj"]["std_nats"]],
        smile5=[by["smile-5"]["mean_nats"], by["smile-5"]["std_nats"]],
        within_15_percent=sorted(e for e in ("nwj", "smile-5")
                                 if abs(by[e]["relative_error"]) <= 0.15))
  return out


def staircase_markdown(result: dict) -> str:
  """The staircase table: one row per (critic, batch, estimator), one column per level."""
  levels = result["levels_nats"]
  cells = {(r["critic"], r["batch_size"], r["estimator"], r["true_mi_nats"]): r
           for r in result["table"]}
  best = {(b["critic"], b["batch_size"], b["true_mi_nats"]): b["estimator"]
          for b in result["best_by_setting"]}
  head = "| critic | batch | estimator | " + " | ".join(f"I = {v:g}" for v in levels) + " |"
  lines = [f"Estimate (nats), mean ± std over the last {result['tail_steps']} steps of each "
           f"level; **bold** = smallest RMSE in its column for that critic and batch. "
           + result["note"], "", head, "|" + "---|" * (3 + len(levels))]
  keys = sorted({k[:3] for k in cells}, key=lambda k: (k[1], k[0], mi.ESTIMATORS.index(k[2])))
  for critic, batch, estimator in keys:
    row = []
    for v in levels:
      r = cells[(critic, batch, estimator, v)]
      text = f"{r['mean_nats']:.2f} ± {r['std_nats']:.2f}"
      row.append(f"**{text}**" if best[(critic, batch, v)] == estimator else text)
    lines.append(f"| {critic} | {batch} | {estimator} | " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def _plot_staircase(path: str, traces: dict, truth: np.ndarray, batch: int,
                    critics: Sequence[str]) -> None:
  fig, axes = plt.subplots(len(critics), len(mi.ESTIMATORS), sharex=True, sharey=True,
                           figsize=(2.2 * len(mi.ESTIMATORS), 2.0 * len(critics) + 0.6),
                           dpi=100, squeeze=False)
  steps = np.arange(len(truth))
  top = float(truth.max()) * 1.6
  window = max(1, min(25, len(truth) // 20))

  def trailing_mean(trace):
    sums = np.cumsum(np.insert(np.nan_to_num(trace), 0, 0.0))
    counts = np.minimum(np.arange(1, len(trace) + 1), window)
    return (sums[1:] - sums[np.maximum(np.arange(1, len(trace) + 1) - window, 0)]) / counts

  for i, critic in enumerate(critics):
    for j, estimator in enumerate(mi.ESTIMATORS):
      ax = axes[i, j]
      trace = traces[(critic, batch, estimator)]
      ax.plot(steps, np.clip(trace, -1, top), color="C0", alpha=0.35, lw=0.5)
      ax.plot(steps, np.clip(trailing_mean(trace), -1, top), color="C0", lw=1.0)
      ax.plot(steps, truth, color="k", lw=1.0)
      if estimator == "infonce":
        ax.axhline(math.log(batch), color="C3", ls="--", lw=0.8)
      ax.set_ylim(-1, top)
      if i == 0:
        ax.set_title(estimator, fontsize=9)
      if j == 0:
        ax.set_ylabel(f"{critic}\nnats", fontsize=8)
      ax.tick_params(labelsize=7)
  fig.suptitle(f"MI staircase, batch {batch} (black: true MI; red dashed: log B). "
               "Our reconstruction of Lee et al. 2024.", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# ----------------------------------------------------------------------------- (b) small batch


def small_batch_rho(c) -> np.ndarray:
  """Per-dimension correlations: `features` strong dimensions sharing `attainable_mi_nats`,
  the rest `weak_mi_nats` each (so the best `features`-d linear map attains exactly that)."""
  if c.weak_mi_nats >= c.attainable_mi_nats / c.features:
    raise ValueError(f"small_batch.weak_mi_nats must be below attainable_mi_nats / features "
                     f"= {c.attainable_mi_nats / c.features}, got {c.weak_mi_nats}")
  strong = mi.gaussian_correlation(c.attainable_mi_nats, c.features) * np.ones(c.features)
  weak = mi.gaussian_correlation(c.weak_mi_nats, 1) * np.ones(c.dim - c.features)
  return np.concatenate([strong, weak])


def _encoder(kind: str, c):
  if kind == "linear":
    return nn.Dense(c.features, use_bias=False)
  if kind == "mlp":
    return _mlp(c.mlp_hidden, c.features)
  raise ValueError(f"unknown small_batch encoder {kind!r}; valid choices: 'linear', 'mlp'")


def run_small_batch(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """(b): InfoNCE at small batch bounds the training value, not what the encoder carries.

  For each encoder, every (critic, batch size) pair trains in one vmapped program: each step
  samples max(B) pairs and the InfoNCE of configuration B uses the first B of them
  (`mi.masked_infonce`); the critic is `mi.pair_scores` with its λ.
  """
  c = config.small_batch
  rho = small_batch_rho(c)
  rho_j = jnp.asarray(rho, jnp.float32)
  settings = [(critic, int(b)) for critic in c.critics for b in c.batch_sizes]
  num_valid = jnp.asarray([b for _, b in settings], jnp.float32)
  weights = jnp.asarray([mi.PAIR_CRITICS[critic] for critic, _ in settings], jnp.float32)
  max_batch = max(b for _, b in settings)
  tail = max(1, c.steps // 10)

  def sample_views(key, num):
    return mi.correlated_gaussian(key, num, rho_j)

  bar = _bar(config, len(c.encoders) * (c.steps + 1), "(b) small batch")
  rows = []
  for e, kind in enumerate(c.encoders):
    encoder = _encoder(kind, c)
    optimizer = optax.adam(c.learning_rate)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), e)
    params = jax.jit(jax.vmap(encoder.init, in_axes=(0, None)))(
        jax.random.split(key, len(settings)), jnp.zeros((1, c.dim)))
    one_step = mi.infonce_step(encoder.apply, sample_views, max_batch, optimizer)

    def step(carry, inputs, one_step=one_step):
      keys = jax.random.split(inputs[0], len(settings))
      return jax.vmap(one_step)(carry, (keys, num_valid, weights))

    keys = jax.random.split(jax.random.fold_in(key, 7), c.steps)
    (params, _), values = _run_chunks(_chunked_scan(lambda _, step=step: step),
                                      (params, jax.vmap(optimizer.init)(params)), keys,
                                      chunk=config.chunk, bar=bar)

    def evaluate(p, weight, encoder=encoder):
      def features(k, num):
        x, y = sample_views(k, num)
        return encoder.apply(p, x), encoder.apply(p, y)

      def trained(k):
        return mi.infonce(mi.pair_scores(*features(k, c.eval_batch), weight))

      trained_eval = jnp.mean(jax.vmap(trained)(
          jax.random.split(jax.random.fold_in(key, 11), c.eval_repeats)))
      fresh_eval = mi.fresh_critic_estimate(
          features, jax.random.fold_in(key, 99), estimator="infonce",
          critic_batch=c.critic_batch, critic_steps=c.critic_steps, learning_rate=1e-3,
          eval_batch=c.eval_batch, eval_repeats=c.eval_repeats)
      return trained_eval, fresh_eval

    trained_eval, fresh_eval = map(np.asarray, jax.jit(jax.vmap(evaluate))(params, weights))
    bar.update(1)
    for i, (critic, batch) in enumerate(settings):
      row = dict(encoder=kind, critic=critic, batch_size=batch, log_batch=math.log(batch),
                 train_infonce_nats=float(np.mean(values[-tail:, i])),
                 trained_critic_eval_nats=float(trained_eval[i]),
                 fresh_critic_eval_nats=float(fresh_eval[i]))
      if kind == "linear":
        kernel = np.asarray(params["params"]["kernel"][i])
        row["exact_mi_nats"] = mi.linear_features_mi(rho, kernel.T)
      rows.append(row)
  bar.close()
  result = dict(note=RECONSTRUCTION_NOTE, attainable_mi_nats=c.attainable_mi_nats,
                features=c.features,
                total_mi_nats=mi.gaussian_mi(rho), rho=rho.tolist(), rows=rows,
                eval_batch=c.eval_batch, critic_batch=c.critic_batch,
                targets=_small_batch_targets(rows))
  _save_json(workdir, "small_batch.json", result)
  with open(os.path.join(workdir, "small_batch.md"), "w") as f:
    f.write(small_batch_markdown(result))
  _plot_small_batch(os.path.join(workdir, "small_batch.png"), result)
  return result


def small_batch_markdown(result: dict) -> str:
  """One row per (encoder, critic, B): training estimate, post-training estimates, exact MI."""
  lines = [f"Attainable MI of {result['features']}-d linear features: "
           f"{result['attainable_mi_nats']:.2f} nats; "
           f"post-training estimates use K = {result['eval_batch']} pairs. " + result["note"],
           "", "| encoder | critic | B | log B | training InfoNCE | trained critic | "
           "fresh critic | exact MI |", "|---|---|---|---|---|---|---|---|"]
  for r in result["rows"]:
    exact = f"{r['exact_mi_nats']:.2f}" if "exact_mi_nats" in r else "—"
    lines.append(f"| {r['encoder']} | {r['critic']} | {r['batch_size']} | {r['log_batch']:.2f} | "
                 f"{r['train_infonce_nats']:.2f} | {r['trained_critic_eval_nats']:.2f} | "
                 f"{r['fresh_critic_eval_nats']:.2f} | {exact} |")
  return "\n".join(lines) + "\n"


def _small_batch_targets(rows: list[dict]) -> dict:
  """B = 4 versus B = 256: the fraction of MI the representation carries (when both ran)."""
  out = {}
  for kind, critic in sorted({(r["encoder"], r["critic"]) for r in rows}):
    by = {r["batch_size"]: r for r in rows if r["encoder"] == kind and r["critic"] == critic}
    if 4 not in by or 256 not in by:
      continue
    metric = "exact_mi_nats" if "exact_mi_nats" in by[4] else "fresh_critic_eval_nats"
    out[f"{kind}/{critic}"] = dict(
        metric=metric, mi_b4=by[4][metric], mi_b256=by[256][metric],
        ratio=by[4][metric] / by[256][metric], train_estimate_b4=by[4]["train_infonce_nats"],
        log_4=math.log(4),
        train_estimate_below_log4=bool(by[4]["train_infonce_nats"] <= math.log(4)))
  return out


def _plot_small_batch(path: str, result: dict) -> None:
  panels = sorted({(r["encoder"], r["critic"]) for r in result["rows"]})
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), dpi=100,
                           sharey=True, squeeze=False)
  for ax, (kind, critic) in zip(axes[0], panels):
    rows = [r for r in result["rows"] if r["encoder"] == kind and r["critic"] == critic]
    b = [r["batch_size"] for r in rows]
    ax.plot(b, [r["log_batch"] for r in rows], "k--", lw=0.8, label="log B")
    ax.plot(b, [r["train_infonce_nats"] for r in rows], "o-", label="training InfoNCE")
    ax.plot(b, [r["fresh_critic_eval_nats"] for r in rows], "s-",
            label=f"fresh critic, K={result['eval_batch']}")
    ax.plot(b, [r["trained_critic_eval_nats"] for r in rows], "^-",
            label=f"trained critic, K={result['eval_batch']}")
    if "exact_mi_nats" in rows[0]:
      ax.plot(b, [r["exact_mi_nats"] for r in rows], "D-", label="exact MI of features")
    ax.axhline(result["attainable_mi_nats"], color="C3", lw=0.8, label="attainable MI")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, result["attainable_mi_nats"] * 1.5)
    ax.set_xlabel("training batch size B")
    ax.set_title(f"{kind} encoder, {critic} critic", fontsize=9)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("nats")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle("Small batch bounds the InfoNCE value, not the MI carried. "
               "Our reconstruction of Lee et al. 2024.", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# ----------------------------------------------------------------------------- label-channel parts


def _image_pools(spec: str, seed: int):
  """`[(train images, labels), (test images, labels)]` of a `contrax.data` source."""
  dataset = data_lib.load(spec, seed=seed)
  return [split[np.arange(len(split))] for split in (dataset.train, dataset.test)]


def _flat(images: jax.Array) -> jax.Array:
  return images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0


def _masked_mlp(hidden: int, max_dim: int):
  """An MLP encoder whose `dim`-d variant is the first `dim` outputs (the rest zeroed by a
  mask), so encoders of several widths share one vmapped program."""
  encoder = _mlp(hidden, max_dim)

  def apply(rep, x):
    params, mask = rep
    return encoder.apply(params, x) * mask

  return encoder, apply


def _channel_views(channel: mi.LabelChannel) -> Callable:
  """`(key, n) -> (x1, x2)`: flattened float views of `n` label-channel pairs."""

  def sample_views(key, num):
    x1, x2, _, _ = mi.sample_label_channel(key, channel, num)
    return _flat(x1), _flat(x2)

  return sample_views


def _probe_features(apply: Callable, reps, channels, key, num: int):
  """View-1 features of each representation (stacked in `reps`) and their bits, on `num`
  pairs of each channel: `[(features [R, num, d], bits [num, n]) per channel]` (traceable)."""
  out = []
  for i, channel in enumerate(channels):
    x1, _, bits1, _ = mi.sample_label_channel(jax.random.fold_in(key, i), channel, num)
    out.append((jax.vmap(apply, in_axes=(0, None))(reps, _flat(x1)), bits1))
  return out


def _probe_accuracies(probe_data, bit_groups: dict) -> list[dict]:
  """Linear-probe accuracy of each representation on groups of bits: the train channel's
  features fit the probe, the test channel's score it. `bit_groups`: name → slice of bits."""
  (train_f, train_b), (test_f, test_b) = [(np.asarray(f), np.asarray(b)) for f, b in probe_data]
  return [{name: _bit_probe_accuracy(train_f[r], train_b[:, s], test_f[r], test_b[:, s])
           for name, s in bit_groups.items()} for r in range(train_f.shape[0])]


def run_measure(config: ml_collections.ConfigDict, workdir: str,
                estimator: str | None = None) -> dict:
  """(c): estimated MI of representations (best estimator of (a)) vs probe accuracy."""
  c = config.measure
  estimator = estimator or (c.estimator if c.estimator != "auto" else "smile-5")
  channels = [mi.label_channel(x, y, num_bits=c.num_bits, flip_prob=c.flip_prob,
                               classes=c.classes) for x, y in _image_pools(c.data, config.seed)]
  dims = [int(d) for d in c.embed_dims]
  masks = jnp.asarray([[1.0 if j < d else 0.0 for j in range(max(dims))] for d in dims])
  encoder, apply = _masked_mlp(c.hidden, max(dims))
  checkpoints = sorted(set(int(s) for s in c.checkpoints))
  chunk = math.gcd(*checkpoints) or 1
  optimizer = optax.adam(c.learning_rate)
  key = jax.random.PRNGKey(config.seed + 2)
  params = jax.jit(jax.vmap(encoder.init, in_axes=(0, None)))(
      jax.random.split(key, len(dims)), _channel_views(channels[0])(key, 1)[0])

  def make_step(channel):
    def one_step(carry, key, mask):
      step = mi.infonce_step(lambda p, x: encoder.apply(p, x) * mask, _channel_views(channel),
                           c.batch_size, optimizer)
      return step(carry, (key, float(c.batch_size), 0.0))

    return lambda carry, inputs: jax.vmap(one_step)(
        carry, jax.random.split(inputs[0], len(dims)), masks)

  scan = _chunked_scan(make_step)
  carry = (params, jax.vmap(optimizer.init)(params))
  bar = _bar(config, checkpoints[-1] + 1, "(c) measure")
  snapshots, done = [], 0
  for target in checkpoints:
    if target > done:
      keys = jax.random.split(jax.random.fold_in(key, done), target - done)
      carry, _ = _run_chunks(scan, carry, keys, None, channels[0], chunk=chunk, bar=bar)
      done = target
    snapshots.append(carry[0])
  settings = [(d, s) for s in checkpoints for d in dims]
  reps = (jax.tree.map(lambda *p: jnp.concatenate(p), *snapshots),
          jnp.concatenate([masks] * len(checkpoints)))

  def evaluate(reps, channels):
    def estimate(rep):
      def features(k, num):
        x, y = _channel_views(channels[1])(k, num)
        return apply(rep, x), apply(rep, y)

      return mi.fresh_critic_estimate(
          features, jax.random.fold_in(key, 5), estimator=estimator,
          critic_batch=c.critic_batch, critic_steps=c.critic_steps, learning_rate=1e-3,
          eval_batch=c.critic_batch, eval_repeats=8)

    probe = _probe_features(apply, reps, channels, jax.random.fold_in(key, 3), c.probe_samples)
    return probe, jax.vmap(estimate)(reps)

  probe, estimates = jax.jit(evaluate)(reps, channels)
  accuracies = _probe_accuracies(probe, {"bits": slice(None)})
  bar.update(1)
  bar.close()
  rows = [dict(embed_dim=d, steps=s, probe_accuracy=acc["bits"], estimated_mi_nats=float(m))
          for (d, s), acc, m in zip(settings, accuracies, estimates)]
  ceiling = mi.label_channel_mi(c.num_bits, c.flip_prob)
  result = dict(note=RECONSTRUCTION_NOTE, estimator=estimator, data=c.data,
                classes=list(c.classes), num_bits=c.num_bits, flip_prob=c.flip_prob,
                ceiling_nats=ceiling, ceiling_bits=ceiling / mi.LOG2, rows=rows,
                log_critic_batch=math.log(c.critic_batch))
  _save_json(workdir, "measure.json", result)
  _plot_measure(os.path.join(workdir, "measure.png"), result)
  return result


def _plot_measure(path: str, result: dict) -> None:
  fig, ax = plt.subplots(figsize=(5.8, 4.0), dpi=100)
  for dim in sorted({r["embed_dim"] for r in result["rows"]}):
    rows = [r for r in result["rows"] if r["embed_dim"] == dim]
    ax.plot([r["estimated_mi_nats"] for r in rows], [r["probe_accuracy"] for r in rows], "o-",
            label=f"embedding dim {dim}")
    for r in rows:
      ax.annotate(str(r["steps"]), (r["estimated_mi_nats"], r["probe_accuracy"]), fontsize=6)
  ax.axvline(result["ceiling_nats"], color="C3", ls="--", lw=1,
             label=f"ceiling I(X1;X2) = {result['ceiling_nats']:.2f} nats")
  ax.set_xlabel(f"estimated I(f(X1); f(X2)) [{result['estimator']}], nats")
  ax.set_ylabel("linear-probe accuracy on the bits")
  ax.set_title("MI as a measure (labels: training steps). Our reconstruction of Lee et al. 2024.",
               fontsize=8)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# ----------------------------------------------------------------------------- (d) InfoMin


def infomin_flip_probs(task_bits: int, nuisance_bits: int, shared_task: int,
                       shared_nuisance: int) -> np.ndarray:
  """Flip probability per tile: the first `shared_*` of each group are shared (p = 0), the
  rest independent between the views (p = 0.5). Tiles: task first, then nuisance."""
  task = np.where(np.arange(task_bits) < shared_task, 0.0, 0.5)
  nuisance = np.where(np.arange(nuisance_bits) < shared_nuisance, 0.0, 0.5)
  return np.concatenate([task, nuisance])


def run_infomin(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """(d): probe accuracy on the task bits as shared task bits and shared nuisance bits grow.

  Every (shared task, shared nuisance) pair trains in one vmapped program; the pairs differ
  only in the channel's flip probabilities.
  """
  c = config.infomin
  num_bits = c.task_bits + c.nuisance_bits
  grid = [(t, n) for t in range(c.task_bits + 1) for n in range(c.nuisance_bits + 1)]
  probs = jnp.asarray(np.stack([infomin_flip_probs(c.task_bits, c.nuisance_bits, t, n)
                                for t, n in grid]), jnp.float32)
  channels = [mi.label_channel(x, y, num_bits=num_bits, flip_prob=0.5, classes=c.classes)
              for x, y in _image_pools(c.data, config.seed)]
  encoder = _mlp(c.hidden, c.embed_dim)
  optimizer = optax.adam(c.learning_rate)
  key = jax.random.PRNGKey(config.seed + 3)
  params = jax.jit(jax.vmap(encoder.init, in_axes=(0, None)))(
      jax.random.split(key, len(grid)), _channel_views(channels[0])(key, 1)[0])

  def make_step(channel):
    def one_step(carry, key, flip_prob):
      views = _channel_views(channel.replace(flip_prob=flip_prob))
      return mi.infonce_step(encoder.apply, views, c.batch_size, optimizer)(
          carry, (key, float(c.batch_size), 0.0))

    return lambda carry, inputs: jax.vmap(one_step)(
        carry, jax.random.split(inputs[0], len(grid)), probs)

  bar = _bar(config, c.steps + 1, "(d) InfoMin")
  (params, _), values = _run_chunks(_chunked_scan(make_step),
                                    (params, jax.vmap(optimizer.init)(params)),
                                    jax.random.split(jax.random.fold_in(key, 1), c.steps),
                                    None, channels[0], chunk=config.chunk, bar=bar)
  probe = jax.jit(lambda p, channels: _probe_features(
      encoder.apply, p, channels, jax.random.fold_in(key, 2), c.probe_samples))(params, channels)
  accuracies = _probe_accuracies(probe, {"task": slice(0, c.task_bits),
                                         "nuisance": slice(c.task_bits, None)})
  bar.update(1)
  bar.close()
  tail = max(1, c.steps // 10)
  rows = [dict(shared_task_bits=t, shared_nuisance_bits=n,
               view_mi_bits=mi.label_channel_mi(num_bits, np.asarray(probs[i]), unit="bits"),
               final_train_infonce_nats=float(np.mean(values[-tail:, i])),
               task_accuracy=accuracies[i]["task"], nuisance_accuracy=accuracies[i]["nuisance"])
          for i, (t, n) in enumerate(grid)]
  result = dict(note=RECONSTRUCTION_NOTE, task_bits=c.task_bits,
                nuisance_bits=c.nuisance_bits, embed_dim=c.embed_dim, rows=rows)
  _save_json(workdir, "infomin.json", result)
  _plot_infomin(os.path.join(workdir, "infomin.png"), result)
  return result


def _plot_infomin(path: str, result: dict) -> None:
  rows = result["rows"]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
  for n in sorted({r["shared_nuisance_bits"] for r in rows}):
    sel = [r for r in rows if r["shared_nuisance_bits"] == n]
    axes[0].plot([r["shared_task_bits"] for r in sel], [r["task_accuracy"] for r in sel], "o-",
                 label=f"{n} shared nuisance bits")
  axes[0].set_xlabel("shared task-relevant bits")
  for t in sorted({r["shared_task_bits"] for r in rows}):
    sel = [r for r in rows if r["shared_task_bits"] == t]
    axes[1].plot([r["shared_nuisance_bits"] for r in sel], [r["task_accuracy"] for r in sel],
                 "o-", label=f"{t} shared task bits")
  axes[1].set_xlabel("shared nuisance bits")
  t_max, n_max = result["task_bits"], result["nuisance_bits"]
  path_rows = ([r for r in rows if r["shared_nuisance_bits"] == 0]
               + [r for r in rows if r["shared_task_bits"] == t_max
                  and r["shared_nuisance_bits"] > 0])
  axes[2].plot([r["view_mi_bits"] for r in path_rows], [r["task_accuracy"] for r in path_rows],
               "o-", label="add task bits, then nuisance bits")
  axes[2].set_xlabel("I(V1; V2), bits")
  for ax in axes:
    ax.set_ylabel("task probe accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"InfoMin toy ({t_max} task + {n_max} nuisance tiles, embedding dim "
               f"{result['embed_dim']}). Our reconstruction of Lee et al. 2024.", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# ----------------------------------------------------------------------------- driver


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Eager checks of the config's choices (ValueError naming the field)."""
  for part in config.parts:
    if part not in PARTS:
      raise ValueError(f"unknown part {part!r} in parts; valid choices: {PARTS}")
  for critic in config.staircase.critics:
    if critic not in mi.CRITICS:
      raise ValueError(f"unknown critic {critic!r} in staircase.critics; valid choices: "
                       f"{tuple(mi.CRITICS)}")
  for critic in config.small_batch.critics:
    if critic not in mi.PAIR_CRITICS:
      raise ValueError(f"unknown critic {critic!r} in small_batch.critics; valid choices: "
                       f"{tuple(mi.PAIR_CRITICS)}")
  for kind in config.small_batch.encoders:
    if kind not in ("linear", "mlp"):
      raise ValueError(f"unknown encoder {kind!r} in small_batch.encoders; valid choices: "
                       f"'linear', 'mlp'")
  if config.measure.estimator != "auto" and config.measure.estimator not in mi.ESTIMATORS:
    raise ValueError(f"unknown measure.estimator {config.measure.estimator!r}; valid choices: "
                     f"'auto', {mi.ESTIMATORS}")
  if int(config.chunk) < 1:
    raise ValueError(f"chunk must be >= 1, got {config.chunk!r}")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Run the configured parts into `workdir`; returns the summary (also summary.json)."""
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  _save_json(workdir, "config.json", config.to_dict())
  summary = dict(note=RECONSTRUCTION_NOTE, seconds={})
  results = {}
  for part in PARTS:
    if part not in config.parts:
      continue
    start = time.perf_counter()
    if part == "staircase":
      results[part] = run_staircase(config, workdir)
      summary[part] = dict(best_overall=results[part]["best_overall"],
                           targets=results[part]["targets"])
    elif part == "small_batch":
      results[part] = run_small_batch(config, workdir)
      summary[part] = dict(targets=results[part]["targets"], rows=results[part]["rows"])
    elif part == "measure":
      estimator = None
      if config.measure.estimator == "auto" and "staircase" in results:
        estimator = results["staircase"]["best_overall"]
      results[part] = run_measure(config, workdir, estimator)
      summary[part] = dict(estimator=results[part]["estimator"],
                           ceiling_nats=results[part]["ceiling_nats"],
                           rows=results[part]["rows"])
    else:
      results[part] = run_infomin(config, workdir)
      summary[part] = dict(rows=results[part]["rows"])
    summary["seconds"][part] = time.perf_counter() - start
  summary["seconds"]["total"] = sum(summary["seconds"].values())
  _save_json(workdir, "summary.json", summary)
  return summary


def run_and_print(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """`run`, then the staircase table, the other parts' summary and the run directory."""
  summary = run(config, workdir)
  if "staircase" in summary:
    with open(os.path.join(workdir, "staircase.md")) as f:
      print(f.read())
  print(json.dumps({k: v for k, v in summary.items() if k != "staircase"}, indent=1,
                   default=float))
  print(f"run directory: {os.path.abspath(workdir)}")
  return summary


if __name__ == "__main__":
  import _study  # experiments/_study.py: the command line (absl + config_flags)

  _study.main(get_config, run_and_print)
