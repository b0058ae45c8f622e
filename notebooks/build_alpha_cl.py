"""Writes notebooks/alpha_cl.ipynb without outputs: `python notebooks/build_alpha_cl.py`.

Then execute it in place (committed with its outputs):
`cd notebooks && jupyter nbconvert --to notebook --execute --inplace alpha_cl.ipynb`.
"""
from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell("""# α-CL: the max player is PCA, ReLU fixed points have higher rank

[P004] Tian 2022 (arXiv 2201.12680;
[formulas](../docs/references.md#alpha-cl-coordinate-wise-optimisation)). With the pairwise
importances α frozen, a gradient step on a contrastive loss is a gradient *ascent* step on the
energy `E_α = Σ_ij α_ij (d²_ij − d²_i)`. For a linear map `z = W x` this is `½ tr(W C_α Wᵀ)` with the
contrastive covariance `C_α` (`contrax.theory.contrastive_covariance`), so for a deep linear
network with unit-Frobenius layers the maximum is `λ_max(C_α)/2`, reached by rank-1 layers
aligned with C_α's top eigenvector. This notebook runs parts (a) and (b) of
`experiments/alpha_cl.py` at a small size; the full study (and part (c), α-CL losses vs
InfoNCE on digits) is `python experiments/alpha_cl.py`."""),
    new_code_cell("""import os, sys, warnings
warnings.filterwarnings('ignore', message='IProgress not found')  # tqdm without ipywidgets
import numpy as np
import matplotlib.pyplot as plt
plt.rcParams['figure.dpi'] = 80  # small PNGs in the committed notebook
sys.path.insert(0, os.path.join(os.path.abspath('..'), 'experiments'))
sys.path.insert(0, os.path.abspath('..'))
import alpha_cl as study

SMALL = os.environ.get('CONTRAX_NOTEBOOK_SMALL', '1') == '1'  # a few seconds of CPU"""),
    new_markdown_cell("""## (a) Deep linear network, α fixed

Three players: InfoNCE's α of the network's outputs at initialisation, uniform α, random
positive α. Inputs are Gaussian; the second view perturbs the last coordinates strongly,
which makes C_α indefinite (negative eigenvalues: directions the augmentation destroys)."""),
    new_code_cell("""cfg = study.get_config().linear
if SMALL:
  cfg.seeds, cfg.depths, cfg.batch, cfg.steps = 2, (2, 3), 12, 1500
lin = study.run_linear(cfg, progress=False)
print('relative gap to lambda_max/2 (max):', f"{lin['claims']['max_relative_gap']:.2e}")
print('sigma_2/sigma_1 over all layers (max):', f"{lin['claims']['max_sv_ratio']:.2e}")
print('|cos| with the top eigenvector (min):', f"{lin['claims']['min_cos_top']:.6f}")
for kind, by_depth in lin['spectra'].items():
  eig = by_depth[min(by_depth)]
  print(f'{kind:8s} eigenvalues of C_alpha:', np.round(eig, 2))"""),
    new_code_cell("""fig, ax = plt.subplots(figsize=(6, 3.5))
for r in lin['runs']:
  if r['seed'] == 0:
    ax.plot(np.asarray(r['trace']) / r['lambda_max_half'], label=f"{r['alpha']} L={r['depth']}")
ax.axhline(1, color='k', ls='--', lw=0.8)
ax.set(xlabel='step (subsampled)', ylabel='E / (lambda_max / 2)', title='projected gradient ascent')
ax.legend(fontsize=7); plt.show()"""),
    new_markdown_cell("""## (b) Two-layer ReLU vs linear

Inputs `x = a_m s e_m + noise`: each sample excites one coordinate direction with a
decaying magnitude `a_m = 0.8^m`. Hidden units have unit norm; the top layer is fixed to the
identity, so each unit ascends its own energy. Linear units all go to C_α's top eigenvector
(rank 1); a ReLU unit only sees the samples it fires on (a *gated* covariance), so units that
start in different regions settle on different directions."""),
    new_code_cell("""cfg = study.get_config().relu
cfg.tops = ('identity',)
if SMALL:
  cfg.seeds, cfg.batch, cfg.input_dim, cfg.hidden_dim, cfg.steps = 2, 48, 6, 16, 2000
rel = study.run_relu(cfg, progress=False)
for r in rel['runs']:
  print(f"{r['net']:6s} seed {r['seed']}: effective rank {r['effective_rank']:.2f}, "
        f"input directions covered {r['covered_directions']}")
print(rel['claims'])"""),
    new_code_cell("""fig, ax = plt.subplots(figsize=(5.5, 3.5))
for net, marker in (('linear', 's'), ('relu', 'o')):
  rows = [r for r in rel['runs'] if r['net'] == net]
  seeds = [r['seed'] for r in rows]
  ax.plot(seeds, [r['effective_rank'] for r in rows], marker=marker, ls='',
          label=f'{net}: effective rank')
  ax.plot(seeds, [r['covered_directions'] for r in rows], marker=marker, ls='', mfc='none',
          label=f'{net}: directions covered')
ax.set(xlabel='seed', ylabel='count', title='first layer after the ascent (top = identity)')
ax.set_xticks(sorted(set(seeds))); ax.legend(fontsize=7); plt.show()"""),
]


def main() -> str:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "alpha_cl.ipynb")
  nb = new_notebook(cells=CELLS, metadata={"kernelspec": {"name": "python3",
                                                          "display_name": "Python 3",
                                                          "language": "python"}})
  nbformat.write(nb, path)
  return path


if __name__ == "__main__":
  print(main())
