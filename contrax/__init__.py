"""contrax: contrastive representation learning in JAX/Flax.

The public submodules are attributes of the package, imported on first use (`import contrax`
stays fast and does not start JAX; `contrax.losses.infonce` imports `contrax.losses`):

- `losses`: InfoNCE / NT-Xent (dense and tiled), CURL, Barlow Twins, α-CL.
- `pairs`: the batch geometry the pairwise losses read; `weights`: negative weightings
  (uniform, HCL, optimal transport, ...); `ot`: the entropic and quadratic couplings behind them.
- `objectives`: a config's loss and weighting as one function, with named presets.
- `augment`, `data`, `models`, `methods`, `parallel`, `train`, `runs`: the training stack;
  `crops` and `loader`: host-side crops and the Grain loader of images of varying size.
- `evaluate`: kNN, linear probe, nearest class centre; `monitor`: the online linear probe and
  collapse diagnostics (RankMe) of a training step; `plotting`: the figures.
- `mi`: mutual-information estimators and known-MI tasks; `theory`: diagnostics of the analyses.

`__version__` is the installed package's version (pyproject.toml; read from the source tree's
pyproject.toml when contrax is not installed).
"""
from __future__ import annotations

__all__ = [
    "augment", "crops", "data", "evaluate", "loader", "losses", "methods", "mi", "models",
    "monitor", "objectives", "ot", "pairs", "parallel", "plotting", "runs", "theory", "train",
    "weights",
]


def _version() -> str:
  """The installed distribution's version, else pyproject.toml's (one source of truth)."""
  import importlib.metadata
  import os
  import re
  try:
    return importlib.metadata.version("contrax")
  except importlib.metadata.PackageNotFoundError:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "pyproject.toml")
    with open(path) as f:
      match = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.MULTILINE)
    if match is None:
      raise RuntimeError(f"contrax is not installed and {path} holds no version") from None
    return match.group(1)


__version__ = _version()


def __getattr__(name: str):
  """`contrax.<submodule>`: imports a public submodule on first access."""
  if name in __all__:
    import importlib
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module 'contrax' has no attribute {name!r}; public submodules: "
                       f"{', '.join(__all__)}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
