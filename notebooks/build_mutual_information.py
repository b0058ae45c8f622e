"""Writes notebooks/mutual_information.ipynb without outputs:
`python notebooks/build_mutual_information.py`.

Then execute it in place (committed with its outputs):
`cd notebooks && jupyter nbconvert --to notebook --execute --inplace mutual_information.ipynb`.
"""
from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell("""# Mutual information done rigorously: estimators on known-MI tasks

A small-size tour of `experiments/mutual_information.py` ([P003] Lee, Kim, Kang, Rhee 2024;
the estimators and the known-MI tasks are written out in
[the references](../docs/references.md#mutual-information-estimators-and-known-mi-tasks)).
**[P003]'s exact statements could not be read; the studies below are our reconstruction.**
The full run, with (c) MI as a measure and (d) the InfoMin toy, is
`python experiments/mutual_information.py`.

It runs at a small size by default (`CONTRAX_NOTEBOOK_SMALL=1`, about a minute of CPU);
`CONTRAX_NOTEBOOK_SMALL=0` runs (a) and (b) at the study's full size."""),
    new_code_cell("""import importlib.util, math, os, tempfile, warnings
warnings.filterwarnings('ignore', message='IProgress not found')  # tqdm without ipywidgets
import jax, jax.numpy as jnp, numpy as np
from IPython.display import Image, Markdown, display
import matplotlib.pyplot as plt
from contrax import mi
plt.rcParams['savefig.dpi'] = 80  # the study's PNGs, small in the committed notebook

root = os.path.abspath('..') if os.path.basename(os.getcwd()) == 'notebooks' else os.getcwd()
spec = importlib.util.spec_from_file_location(
    'mutual_information', os.path.join(root, 'experiments', 'mutual_information.py'))
mie = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mie)
SMALL = os.environ.get('CONTRAX_NOTEBOOK_SMALL', '1') == '1'
workdir = tempfile.mkdtemp(prefix='mutual_information_')"""),
    new_markdown_cell("""## The estimators with the optimal critic

With the closed-form critic `S = log p(x, y) / (p(x) p(y))` (NWJ: `1 + log r`), every bound
is as good as it can be; what is left is the bound itself. InfoNCE cannot exceed `log K`;
NWJ and DV pay in variance as the MI grows."""),
    new_code_cell("""dim, k = 20, 256
levels = (2.0, 4.0, 6.0, 8.0)
names = ('infonce', 'nwj', 'dv', 'smile-5')

def optimal(key, rho):
  x, y = mi.correlated_gaussian(key, k, rho)
  s = mi.gaussian_log_density_ratio(x, y, rho)
  return {n: mi.objective(n, s + 1.0 if n == 'nwj' else s)[0] for n in names}

rows = [f'| true MI | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
for level in levels:
  rho = jnp.full((dim,), mi.gaussian_correlation(level, dim))
  runs = jax.vmap(lambda key: optimal(key, rho))(jax.random.split(jax.random.PRNGKey(0), 20))
  cells = [f'{float(np.mean(runs[n])):.2f} ± {float(np.std(runs[n])):.2f}' for n in names]
  rows.append(f'| {level:g} | ' + ' | '.join(cells) + ' |')
display(Markdown(f'K = {k} pairs, 20 batches; log K = {math.log(k):.2f}\\n\\n' + '\\n'.join(rows)))"""),
    new_markdown_cell("""## (a) The staircase (small)

Critics trained while the true MI steps up; each estimator's readout against the truth
(black). JS and SMILE(τ) share one JS-trained critic and differ only in the readout."""),
    new_code_cell("""config = mie.get_config()
config.progress = False
if SMALL:
  config.staircase.levels_nats = (2.0, 4.0, 6.0)
  config.staircase.batch_sizes = (64,)
  config.staircase.critics = ('separable', 'concat')
  config.staircase.steps_per_level = 300
staircase = mie.run_staircase(config, workdir)
display(Markdown(mie.staircase_markdown(staircase)))
display(Image(os.path.join(workdir, f'staircase_b{config.staircase.batch_sizes[0]}.png')))"""),
    new_markdown_cell("""## (b) Small batch: the InfoNCE value versus the information carried

A linear encoder 16 → 4 trained with InfoNCE at batch B. The training estimate is capped by
`log B`; the representation's exact MI (Gaussian features) is not."""),
    new_code_cell("""if SMALL:
  config.small_batch.encoders = ('linear',)
  config.small_batch.critics = ('dot',)
  config.small_batch.batch_sizes = (4, 64, 256)
  config.small_batch.steps = 1000
  config.small_batch.critic_steps = 300
small = mie.run_small_batch(config, workdir)
display(Markdown(mie.small_batch_markdown(small)))
display(Image(os.path.join(workdir, 'small_batch.png')))"""),
]


def build(path: str) -> None:
  notebook = new_notebook(cells=CELLS, metadata={
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"}})
  nbformat.write(notebook, path)


if __name__ == "__main__":
  build(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mutual_information.ipynb"))
