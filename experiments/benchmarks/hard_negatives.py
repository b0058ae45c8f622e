"""Benchmark: the cost of OT hard negatives (HCL-OT) against NT-Xent, and ott-jax vs POT.

Three measurements, each timed in this one process with the contenders interleaved
(A, B, A, B, ...; `_harness.time_calls`, after an untimed compile call) so that load on the
machine hits all alike; the fastest of `repeats` runs is reported (the median is in
results.json):

1. Loss step: `jax.jit(jax.value_and_grad(loss))` w.r.t. both views, 2B = 512 and 2048,
   D = 128, t = 0.5. NT-Xent vs HCL-OT = the trainer's `hcl_ot` objective (`objectives.make`:
   `infonce(weights=stop_gradient(weights.ot(...)), tau_plus)`) with eps = 0.7 and a fixed `num_iterations` of Sinkhorn (the coupling is part of
   the step). Inputs are clustered (10 centres + noise, like embeddings of a trained encoder)
   so that the coupling is far from uniform; the coupling's column marginal error at the
   chosen iteration count is reported next to the time.
2. Training step with an encoder: the same two losses behind the small ConvNet + projection
   head (`contrax.models.create('convnet')`) on 32x32x3 images, gradient w.r.t. the
   parameters, at 2B = `encoder_sizes`: what a training step pays.
3. The coupling alone, from the same masked cost matrix: contrax/ott-jax (`ot.entropic_coupling`,
   jitted, float32, log domain) vs POT's `ot.sinkhorn` on the host (NumPy float64, the
   official HCL-OT code's approach) with the same eps and iteration count (`stopThr=0`, so
   POT runs every iteration), and their max difference.

Command:

    python experiments/benchmarks/hard_negatives.py

Writes runs/hard_negatives_bench/ (or --workdir): config.json, results.json, results.md,
summary.json.

Runtime: ~8 min wall (~1.5 min of CPU) on the 2-core CPU while ~6 other jobs shared it.
Result of that run (preliminary: the load made single timings vary by 2-3x; minima shown):

    loss fwd+bwd   2B = 512:  NT-Xent 2.8 ms,  HCL-OT(5) 8.4 ms (3.0x),  HCL-OT(10) 12.3 ms (4.4x)
                   2B = 2048: NT-Xent 293 ms,  HCL-OT(5) 776 ms (2.6x),  HCL-OT(10) 1061 ms (3.6x)
    ConvNet step   2B = 512:  NT-Xent 3761 ms, HCL-OT(5) 3652 ms, HCL-OT(10) 3641 ms (0.97x: noise)
    coupling alone 2B = 512:  ott log 11 ms / POT 3.6 ms (5 it.); 2B = 2048: 394 ms / 563 ms
                   (POT / contrax = 0.33x at 512, 1.43x at 2048; ott kernel mode 4x slower than
                   log mode); max |pi - pi_POT| = 4e-11 (entries up to 3e-5)

The 1.3x target is met per *training step* (the encoder dominates) but not for the loss in
isolation: NT-Xent's forward + backward is a few elementwise passes over the 2B x 2B logits,
and each log-domain Sinkhorn iteration adds two log-sum-exp passes over a matrix of the same
size, measured at 0.2-0.4x of a whole NT-Xent step per iteration. Five iterations already give a column marginal error of ~1e-5 at eps = 0.7 (the default
10 reach float32 rounding). What would close the gap: fewer iterations; scaling-domain
iterations as two matrix-vector products each with the kernel exponentiated once (ott 0.6's
kernel mode raises the whole kernel to a power at every access -- `kernel ** (eps/eps_t)` in
`Geometry.apply_kernel` -- which is why it is slower here, and why POT's NumPy matvecs win
at 2B = 512); or reusing the loss's exp(s/t) matrix as the kernel when eps = 2t.
"""
from __future__ import annotations

import json
import time

import _harness
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "hard_negatives_bench"
  c.sizes = (512, 2048)  # 2B, stacked embeddings
  c.encoder_sizes = (512,)
  c.dim = 128
  c.temperature = 0.5
  c.epsilon = 0.7  # the paper's best CIFAR value
  c.tau_plus = 0.05
  # Sinkhorn iteration counts to compare. At eps = 0.7 on clustered embeddings the column
  # marginal error is ~2e-5 after 5 iterations and ~3e-7 (float32 rounding) after 10.
  c.iteration_counts = (5, 10)
  c.repeats = 7
  c.seed = 0
  return c


def clustered_views(key, batch: int, dim: int, num_clusters: int = 10, noise: float = 0.6):
  """Two views of `batch` points around `num_clusters` random centres (unnormalised)."""
  import jax

  k_centres, k_labels, k1, k2 = jax.random.split(key, 4)
  centres = jax.random.normal(k_centres, (num_clusters, dim))
  labels = jax.random.randint(k_labels, (batch,), 0, num_clusters)
  return (centres[labels] + noise * jax.random.normal(k1, (batch, dim)),
          centres[labels] + noise * jax.random.normal(k2, (batch, dim)))


def losses(config) -> dict:
  """NT-Xent and HCL-OT with each Sinkhorn iteration count, by name."""
  from contrax import objectives

  def objective(preset, **weighting_ot):
    c = objectives.apply_preset(objectives.default_config(), preset)
    c.loss.temperature = config.temperature
    if weighting_ot:  # the trainer's HCL-OT objective (coupling detached, as the official code)
      c.loss.tau_plus = config.tau_plus
      c.weighting.ot.update(weighting_ot)
    return objectives.make(c)

  named = dict(ntxent=objective("ntxent"))
  for it in config.iteration_counts:
    named[f"hcl_ot_{it}"] = objective("hcl_ot", epsilon=config.epsilon, num_iterations=it)
  return named


def ratios(seconds: dict) -> dict:
  return {k: v["min"] / seconds["ntxent"]["min"] for k, v in seconds.items() if k != "ntxent"}


def loss_step(config, n: int) -> dict:
  import jax

  from contrax import ot
  from contrax import pairs as pairs_lib

  z1, z2 = clustered_views(jax.random.key(config.seed), n // 2, config.dim)
  steps = {name: jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
           for name, loss in losses(config).items()}
  seconds = _harness.time_calls({k: (lambda f=f: f(z1, z2)) for k, f in steps.items()},
                                config.repeats)
  errors = {}
  for it in config.iteration_counts:
    diagnostics = jax.jit(lambda a, b: ot.batch_coupling(
        pairs_lib.build(a, b), epsilon=config.epsilon, num_iterations=it).diagnostics)(z1, z2)
    errors[f"hcl_ot_{it}"] = float(diagnostics.column_marginal_error)
  return dict(n=n, seconds=seconds, ratio=ratios(seconds), column_marginal_error=errors)


def encoder_step(config, n: int) -> dict:
  import jax
  import jax.numpy as jnp

  from contrax import models

  model = models.create("convnet", projection_dim=config.dim)
  variables = models.init_variables(model, jax.random.key(config.seed), (32, 32, 3))
  images = jax.random.uniform(jax.random.key(config.seed + 1), (n, 32, 32, 3), jnp.float32,
                              0, 255)

  def make_step(loss):
    def objective(params):
      (_, z), _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                              images, train=True, mutable=["batch_stats"])
      return loss(z[: n // 2], z[n // 2:])
    return jax.jit(jax.value_and_grad(objective))

  steps = {name: make_step(loss) for name, loss in losses(config).items()}
  seconds = _harness.time_calls({k: (lambda f=f: f(variables["params"])) for k, f in steps.items()},
                                config.repeats)
  return dict(n=n, seconds=seconds, ratio=ratios(seconds))


def coupling_vs_pot(config, n: int, num_iterations: int) -> dict:
  import warnings

  import jax
  import jax.numpy as jnp
  import numpy as np
  import ot as pot

  from contrax import ot
  from contrax import pairs as pairs_lib

  z1, z2 = clustered_views(jax.random.key(config.seed), n // 2, config.dim)
  problem = ot.batch_problem(pairs_lib.build(z1, z2))
  cost = ot.exclude_pairs(problem.cost, problem.negative_mask, config.epsilon)
  marginal = jnp.full((n,), 1.0 / n, jnp.float32)
  solvers = {"contrax_log": jax.jit(lambda c: ot.entropic_coupling(
      c, marginal, marginal, epsilon=config.epsilon, num_iterations=num_iterations,
      keep_mask=problem.negative_mask)[0])}
  cost_host = np.asarray(cost, np.float64)
  a_host = np.full(n, 1.0 / n)

  def pot_solve():
    with warnings.catch_warnings():  # stopThr=0 runs every iteration, then warns
      warnings.simplefilter("ignore")
      return pot.sinkhorn(a_host, a_host, cost_host, config.epsilon,
                          numItermax=num_iterations, stopThr=0.0)

  contenders = {name: (lambda f=f: f(cost)) for name, f in solvers.items()}
  seconds = _harness.time_calls(dict(contenders, pot=pot_solve), config.repeats)
  expected = pot_solve()
  diff = {name: float(np.max(np.abs(np.asarray(f(cost), np.float64) - expected)))
          for name, f in solvers.items()}
  return dict(n=n, num_iterations=num_iterations, seconds=seconds, max_abs_diff=diff,
              max_entry=float(expected.max()),
              pot_over_contrax=seconds["pot"]["min"] / seconds["contrax_log"]["min"])


def tables(results: dict, config) -> str:
  counts = config.iteration_counts
  lines = [f"Loss forward + backward (D = {config.dim}, eps = {config.epsilon}; HCL-OT(k): k "
           "Sinkhorn iterations inside the step; coupling column marginal error in brackets):",
           "", "| 2B | NT-Xent (ms) | " + " | ".join(f"HCL-OT({k}) (ms)" for k in counts)
           + " | " + " | ".join(f"HCL-OT({k}) / NT-Xent" for k in counts) + " |",
           "|---|---|" + "---|" * (2 * len(counts))]
  for r in results["loss_step"]:
    s = r["seconds"]
    cells = [f"{1e3 * s[f'hcl_ot_{k}']['min']:.1f}" for k in counts]
    cells += [f"{r['ratio'][f'hcl_ot_{k}']:.2f}x [{r['column_marginal_error'][f'hcl_ot_{k}']:.0e}]"
              for k in counts]
    lines.append(f"| {r['n']} | {1e3 * s['ntxent']['min']:.1f} | " + " | ".join(cells) + " |")
  if results["encoder_step"]:
    lines += ["", "Training step with the ConvNet + head on 32x32x3 images (gradient w.r.t. "
              "parameters):", "", "| 2B | NT-Xent (ms) | "
              + " | ".join(f"HCL-OT({k}) (ms) | ratio" for k in counts) + " |",
              "|---|---|" + "---|" * (2 * len(counts))]
    for r in results["encoder_step"]:
      s = r["seconds"]
      cells = [f"{1e3 * s[f'hcl_ot_{k}']['min']:.0f} | {r['ratio'][f'hcl_ot_{k}']:.2f}x"
               for k in counts]
      lines.append(f"| {r['n']} | {1e3 * s['ntxent']['min']:.0f} | " + " | ".join(cells) + " |")
  lines += ["", f"Coupling alone from the masked cost, eps = {config.epsilon}:", "",
            "| 2B | iterations | contrax/ott log-domain f32 (ms) | "
            "POT ot.sinkhorn NumPy f64 (ms) | POT / contrax log | max abs diff to POT (largest "
            "entry) |", "|---|---|---|---|---|---|"]
  for r in results["coupling"]:
    s = r["seconds"]
    lines.append(f"| {r['n']} | {r['num_iterations']} | {1e3 * s['contrax_log']['min']:.1f} | "
                 f"{1e3 * s['pot']['min']:.1f} | "
                 f"{r['pot_over_contrax']:.2f}x | {r['max_abs_diff']['contrax_log']:.0e} "
                 f"({r['max_entry']:.0e}) |")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  results = dict(loss_step=[], encoder_step=[], coupling=[])
  start = time.perf_counter()
  for n in config.sizes:
    results["loss_step"].append(loss_step(config, n))
    print(json.dumps(results["loss_step"][-1]), flush=True)
    for it in config.iteration_counts:
      results["coupling"].append(coupling_vs_pot(config, n, it))
      print(json.dumps(results["coupling"][-1]), flush=True)
  for n in config.encoder_sizes:
    results["encoder_step"].append(encoder_step(config, n))
    print(json.dumps(results["encoder_step"][-1]), flush=True)
  results["seconds_total"] = time.perf_counter() - start
  summary = dict(
      loss_step_ratio={r["n"]: r["ratio"] for r in results["loss_step"]},
      encoder_step_ratio={r["n"]: r["ratio"] for r in results["encoder_step"]},
      pot_over_contrax={f"{r['n']}@{r['num_iterations']}": r["pot_over_contrax"]
                        for r in results["coupling"]},
      seconds_total=results["seconds_total"])
  return _harness.write(workdir, config, results, tables(results, config), summary)


if __name__ == "__main__":
  _harness.main(get_config, run)
