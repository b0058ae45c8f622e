"""Writes notebooks/hard_negatives.ipynb without outputs:
`python notebooks/build_hard_negatives.py`.

Then execute it in place (committed with its outputs):
`cd notebooks && jupyter nbconvert --to notebook --execute --inplace hard_negatives.ipynb`.
"""
from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell("""# Hard negatives as regularised optimal transport

A small tour of `contrax.ot` and `contrax.weights` ([P002] Jiang, Ishwar, Aeron 2023;
[formulas](../docs/references.md#hard-negatives-as-regularised-optimal-transport)). On a toy
batch of two views of clustered points on the sphere we look at the entropic
coupling of the in-batch cost `C_ij = ||z_i - z_j||^2`, the negative weights `w = 2B pi` it
induces for one anchor, and how the regularisation eps moves them between *hardest*
(small eps) and *uniform* (SimCLR / DCL, large eps). The training study is
`python experiments/hard_negatives.py`."""),
    new_code_cell("""import jax, jax.numpy as jnp, numpy as np
import matplotlib.pyplot as plt
from contrax import ot, pairs, plotting, weights
plt.rcParams['figure.dpi'] = 80  # small PNGs in the committed notebook

# 3 clusters on the unit sphere in 3-D, B = 12 images, two noisy views each (2B = 24 rows).
rng = np.random.RandomState(0)
centres = rng.randn(3, 3)
labels = np.repeat(np.arange(3), 4)
z1 = jnp.asarray(centres[labels] + 0.35 * rng.randn(12, 3), jnp.float32)
z2 = jnp.asarray(centres[labels] + 0.35 * rng.randn(12, 3), jnp.float32)
batch = pairs.build(z1, z2)  # L2-normalises the rows: the points lie on the unit sphere
problem = ot.batch_problem(batch)
print('stacked cost', problem.cost.shape, '; negatives per anchor:', int(problem.negative_mask[0].sum()))"""),
    new_markdown_cell("""## The coupling

Balanced entropic OT with uniform marginals: self and positive pairs (the two diagonals) get
a large finite cost and exactly zero mass. Rows are sorted by cluster, so same-cluster
(hard) negatives sit in the diagonal blocks. The three panels share one colour scale, so
their colours compare directly: each row of `2B pi` sums to 1 over the anchor's 22
negatives (uniform weights would all be 1/22 = 0.045)."""),
    new_code_cell("""order = np.argsort(np.concatenate([labels, labels]), kind='stable')
epsilons = (0.1, 0.5, 2.0)
weights_by_eps = {}
for eps in epsilons:
  coupling = ot.batch_coupling(batch, epsilon=eps, num_iterations=200)
  diag = coupling.diagnostics
  weights_by_eps[eps] = np.asarray(coupling.matrix)[np.ix_(order, order)] * 24
  print(f'eps={eps}: row / column marginal error {float(diag.row_marginal_error):.1e} / '
        f'{float(diag.column_marginal_error):.1e}, converged {bool(diag.converged)}')
vmax = max(w.max() for w in weights_by_eps.values())
fig, axes = plt.subplots(1, len(epsilons), figsize=(13, 3.6), layout='constrained')
for ax, (eps, w) in zip(axes, weights_by_eps.items()):
  plotting.heatmap(ax, w, vmin=0.0, vmax=vmax, label='weight 2B * pi_ij')
  ax.set_title(f'eps = {eps}')
  ax.set_xlabel('column j (sorted by cluster)'); ax.set_ylabel('anchor i (sorted by cluster)')
plt.show()"""),
    new_markdown_cell("""## The weights of one anchor

Weights of anchor 0 over its 22 negatives, sorted by similarity: uniform (SimCLR/DCL),
HCL `softmax(beta s / t)`, balanced OT and the sparse quadratic OT coupling. The
semi-relaxed coupling equals HCL with `beta = 2t / eps` (checked below)."""),
    new_code_cell("""t, eps = 0.5, 0.5
all_sims = np.asarray(batch.sims)     # cosine similarities; the cost is 2 - 2 s
sims = all_sims[0]
mask = np.asarray(problem.negative_mask[0])
by_name = {
    'uniform': weights.uniform(batch),
    f'HCL beta={2 * t / eps:g}': weights.hcl(batch, beta=2 * t / eps, temperature=t),
    f'OT balanced eps={eps}': weights.ot(batch, epsilon=eps, num_iterations=200),
    'OT quadratic gamma=0.05': weights.quadratic_ot(batch, gamma=0.05),
}
semi = weights.ot(batch, epsilon=eps, marginals='semi_relaxed')
print('max |semi-relaxed OT - HCL(beta = 2t/eps)| =',
      float(jnp.max(jnp.abs(semi - by_name[f'HCL beta={2 * t / eps:g}']))))
idx = np.argsort(sims[mask])
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for name, w in by_name.items():
  ax.plot(sims[mask][idx], np.asarray(w)[0][mask][idx], marker='o', ms=3, label=name)
ax.set_xlabel('similarity s_0j of the negative'); ax.set_ylabel('weight w_0j')
ax.set_title('negative weights of anchor 0'); ax.legend(fontsize=8)
plt.show()
print('quadratic OT: negatives of anchor 0 with exactly zero weight:',
      int(np.sum(np.asarray(by_name['OT quadratic gamma=0.05'])[0][mask] == 0)), 'of', int(mask.sum()))"""),
    new_markdown_cell("""## How eps moves them

As eps grows the weights tend to uniform; as it shrinks they concentrate on the most similar
negatives. Two summaries per anchor, averaged over the batch: the mean similarity of the
weighted negatives and the effective number of negatives `exp(H(w_i))`."""),
    new_code_cell("""grid = np.geomspace(0.05, 20.0, 12)
neg = np.asarray(problem.negative_mask)
mean_sim, effective = [], []
for e in grid:
  w = np.asarray(weights.ot(batch, epsilon=float(e), num_iterations=200))
  mean_sim.append(np.mean(np.sum(np.where(neg, w * all_sims, 0.0), axis=1)))
  entropy = -np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0), axis=1)
  effective.append(np.mean(np.exp(entropy)))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
axes[0].semilogx(grid, mean_sim, marker='o')
axes[0].axhline(np.mean(np.sum(np.where(neg, all_sims, 0.0), axis=1) / neg.sum(1)), ls='--', c='k', label='uniform')
axes[0].set_xlabel('eps'); axes[0].set_ylabel('mean similarity of weighted negatives'); axes[0].legend()
axes[1].semilogx(grid, effective, marker='o'); axes[1].axhline(neg.sum(1)[0], ls='--', c='k')
axes[1].set_xlabel('eps'); axes[1].set_ylabel('effective number of negatives')
plt.tight_layout(); plt.show()"""),
]


def main() -> None:
  notebook = new_notebook(cells=CELLS, metadata={
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hard_negatives.ipynb")
  nbformat.write(notebook, path)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
