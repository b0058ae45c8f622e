"""(c) MI as a measure: the estimated MI of a representation against its linear-probe accuracy.
Lee et al. 2024's exact statements could not be read; the claims tested here and the settings
are our reconstruction.

Encoders trained with InfoNCE on label-channel image pairs (digits 3 vs 5 as tiles, n bits,
flip probability p) for several step counts and widths. Per run (width × checkpoint): the
representation's MI estimated by a fresh critic with the best estimator of (a)
`mi_staircase.py` (SMILE-5 when (a) did not run) and the linear-probe accuracy on the bits,
against the ceiling I(X1; X2) = n(1 − H_b(p)) bits. Table: one row per run; plot: estimate
vs accuracy per width.

Command (every config field is a flag, e.g. `--config.measure.checkpoints=0,100`);
`experiments/mutual_information.py` runs it after (a), with the estimator (a) found best:

    python experiments/mi_measure.py

Writes runs/mi_measure/ (or --workdir): config.json, measure.json, measure.md, measure.png,
summary.json.

Runtime: part of the ≈ 40 % of the whole study's 8 min 53 s CPU that (a) leaves.

Result of the default command (seed 0): digits 3 vs 5, 4 bits, p = 0.1: ceiling I(X1; X2) =
1.47 nats. SMILE-5 on the representations rises with training and width (dim 8: 0.17 → 0.99 →
1.32 → 1.38 nats at 0, 20, 100, 500 steps; dim 1 saturates at 0.38–0.43) and tracks the probe
accuracy on the bits (0.73 → 0.95 → 0.996 → 1.00 for dim 8; ≤ 0.64 for dim 1); every estimate
stays below the ceiling. Measured with a scikit-learn logistic probe per bit; the script now
probes with `contrax.evaluate.linear_probe` (same protocol: standardised features, L2 chosen
on a stratified validation split), so a rerun may move individual accuracies slightly.
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
import optax

import _study
from contrax import data as data_lib
from contrax import mi, models
from mi_staircase import RECONSTRUCTION_NOTE

PART = "measure"
SUMMARY = ("estimator", "ceiling_nats", "rows")  # result fields repeated in summary.json


def get_config() -> ml_collections.ConfigDict:
  """The defaults of the docstring's command (`chunk`: unused, the checkpoints set the chunks)."""
  c = ml_collections.ConfigDict(dict(name="mi_measure", seed=0, parts=(PART,), chunk=50,
                                     progress=True))
  c.measure = ml_collections.ConfigDict(dict(
      data="digits", classes=(3, 5), num_bits=4, flip_prob=0.1, embed_dims=(1, 2, 8),
      checkpoints=(0, 20, 100, 500), batch_size=128, learning_rate=1e-3, hidden=128,
      estimator="auto",  # the best of (a) when it ran, else smile-5
      critic_batch=256, critic_steps=500, probe_samples=2000))
  return c


def tiny_config() -> ml_collections.ConfigDict:
  """A few-seconds version (tests, notebook smoke runs)."""
  c = get_config()
  c.chunk, c.progress = 10, False
  c.measure.update(dict(num_bits=2, embed_dims=(2,), checkpoints=(0, 10), batch_size=16,
                        hidden=16, critic_batch=16, critic_steps=10, probe_samples=100))
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  _study.check_choices("measure.estimator", [config.measure.estimator],
                       ("auto",) + mi.ESTIMATORS)


def label_channels(spec: str, seed: int, **channel) -> list:
  """The train and test `mi.label_channel` of a `contrax.data` source's splits."""
  dataset = data_lib.load(spec, seed=seed)
  return [mi.label_channel(*split[np.arange(len(split))], **channel)
          for split in (dataset.train, dataset.test)]


def run(config: ml_collections.ConfigDict, workdir: str, estimator: str | None = None) -> dict:
  """Estimated MI of representations (`estimator`, else `measure.estimator`, "auto": SMILE-5)
  vs probe accuracy. Every width trains in one vmapped program: the `d`-wide encoder is the
  first `d` outputs of one MLP (the rest masked to zero)."""
  c = config.measure
  estimator = estimator or (c.estimator if c.estimator != "auto" else "smile-5")
  channels = label_channels(c.data, config.seed, num_bits=c.num_bits, flip_prob=c.flip_prob,
                            classes=c.classes)
  dims = [int(d) for d in c.embed_dims]
  masks = jnp.asarray([[1.0 if j < d else 0.0 for j in range(max(dims))] for d in dims])
  encoder = models.ProjectionHead(projection_dim=max(dims), hidden_dim=c.hidden, batch_norm=False)

  def apply(rep, x):
    params, mask = rep
    return encoder.apply(params, x) * mask

  checkpoints = sorted(set(int(s) for s in c.checkpoints))
  chunk = math.gcd(*checkpoints) or 1
  optimizer = optax.adam(c.learning_rate)
  key = jax.random.PRNGKey(config.seed + 2)
  params = jax.jit(jax.vmap(encoder.init, in_axes=(0, None)))(
      jax.random.split(key, len(dims)), mi.label_channel_views(channels[0])(key, 1)[0])

  def make_step(channel):
    def one_step(carry, key, mask):
      step = mi.infonce_step(lambda p, x: encoder.apply(p, x) * mask,
                             mi.label_channel_views(channel), c.batch_size, optimizer)
      return step(carry, (key, float(c.batch_size), 0.0))

    return lambda carry, inputs: jax.vmap(one_step)(
        carry, jax.random.split(inputs[0], len(dims)), masks)

  carry = (params, jax.vmap(optimizer.init)(params))
  bar = _study.progress_bar(checkpoints[-1] + 1, "(c) measure", config.progress)
  snapshots, done = [], 0
  for target in checkpoints:
    if target > done:
      keys = jax.random.split(jax.random.fold_in(key, done), target - done)
      carry, _ = mi.chunked_scan(make_step, carry, keys, None, channels[0], chunk=chunk,
                                 on_chunk=bar.update)
      done = target
    snapshots.append(carry[0])
  settings = [(d, s) for s in checkpoints for d in dims]
  reps = (jax.tree.map(lambda *p: jnp.concatenate(p), *snapshots),
          jnp.concatenate([masks] * len(checkpoints)))

  def evaluate(reps, channels):
    def estimate(rep):
      def features(k, num):
        x, y = mi.label_channel_views(channels[1])(k, num)
        return apply(rep, x), apply(rep, y)

      return mi.fresh_critic_estimate(
          features, jax.random.fold_in(key, 5), estimator=estimator,
          critic_batch=c.critic_batch, critic_steps=c.critic_steps, learning_rate=1e-3,
          eval_batch=c.critic_batch, eval_repeats=8)

    probe = mi.probe_features(apply, reps, channels, jax.random.fold_in(key, 3), c.probe_samples)
    return probe, jax.vmap(estimate)(reps)

  probe, estimates = jax.jit(evaluate)(reps, channels)
  accuracies = mi.bit_probe_accuracies(probe, {"bits": slice(None)})
  bar.update(1)
  bar.close()
  rows = [dict(embed_dim=d, steps=s, probe_accuracy=acc["bits"], estimated_mi_nats=float(m))
          for (d, s), acc, m in zip(settings, accuracies, estimates)]
  ceiling = mi.label_channel_mi(c.num_bits, c.flip_prob)
  result = dict(note=RECONSTRUCTION_NOTE, estimator=estimator, data=c.data,
                classes=list(c.classes), num_bits=c.num_bits, flip_prob=c.flip_prob,
                ceiling_nats=ceiling, ceiling_bits=ceiling / mi.LOG2, rows=rows,
                log_critic_batch=math.log(c.critic_batch))
  _study.write_result(workdir, PART, result, markdown)
  _plot(os.path.join(workdir, "measure.png"), result)
  return result


def markdown(result: dict) -> str:
  """One row per (embedding dim, training steps): estimated MI and probe accuracy."""
  lines = [f"Ceiling I(X1; X2) = {result['ceiling_nats']:.2f} nats ({result['num_bits']} bits, "
           f"flip probability {result['flip_prob']:g}). " + result["note"], "",
           f"| embedding dim | steps | estimated MI [{result['estimator']}], nats | "
           "probe accuracy |", "|---|---|---|---|"]
  lines += [f"| {r['embed_dim']} | {r['steps']} | {r['estimated_mi_nats']:.2f} | "
            f"{r['probe_accuracy']:.3f} |" for r in result["rows"]]
  return "\n".join(lines) + "\n"


def _plot(path: str, result: dict) -> None:
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
  _study.save_figure(fig, path)


if __name__ == "__main__":
  import mutual_information  # the study's driver: config.json, this part, summary.json
  _study.main(get_config, mutual_information.run_and_print)
