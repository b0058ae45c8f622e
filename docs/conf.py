"""Sphinx configuration of the contrax documentation (Sphinx + MyST-NB + sphinx-book-theme).

Build: `python -m sphinx -W --keep-going -b html docs docs/_build/html` (what .ci/run does).
The study notebooks in notebooks/ (linked as docs/notebooks) are executed during the build at
their small size (CONTRAX_NOTEBOOK_SMALL=1); a failing cell fails the build.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("CONTRAX_NOTEBOOK_SMALL", "1")  # read by the notebooks' kernels
os.environ["PYTHONPATH"] = os.pathsep.join(
    [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import contrax  # noqa: E402

project = "contrax"
author = "the contrax developers"
copyright = "2026, the contrax developers"  # noqa: A001 (Sphinx's name)
release = version = contrax.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # the docstrings are Google style (Args:, Returns:)
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "notebooks/build_*.py", "notebooks/*.md"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True

autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Docstrings mention types in prose ("Pairs", "jax.Array") that need no cross-reference.
nitpicky = False
suppress_warnings = ["myst.header", "autosectionlabel.*"]

html_theme = "sphinx_book_theme"
html_title = f"contrax {release}"
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}
napoleon_use_ivar = True

# Single backticks in the docstrings mean code (as in Markdown).
default_role = "code"

# ----------------------------------------------------------------------------- docstrings
# contrax's docstrings are plain text in the Google style (napoleon reads their Args: /
# Returns: sections) with Markdown habits: formulas and examples as indented blocks after a
# line ending in ':', tables of `|` rows, `|x|` for a norm, `*` and `name_` in formulas.
# reStructuredText reads those as block quotes, substitutions, emphasis and link targets; this
# hook (run before napoleon) turns indented blocks and tables outside the Google sections into
# literal blocks and escapes the rest, so the docstrings stay readable in `help()` and render
# as written here.
import re  # noqa: E402

_SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Attributes|Yields|Keyword Args|"
                      r"Note|Notes|Example|Examples|Warning|Warnings|See Also|References):\s*$")
_ESCAPE = re.compile(r"(\||\*|(?<=\w)_(?=\W|$))")


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def _escape_prose(line: str) -> str:
  parts = line.split("`")
  return "`".join(_ESCAPE.sub(r"\\\1", p) if k % 2 == 0 else p for k, p in enumerate(parts))


def _markdownish_to_rst(app, what, name, obj, options, lines):
  """Hanging-indent continuations are joined to their line; an indented block after a blank
  line, or a table, becomes a literal block; other prose is escaped (see above)."""
  del app, what, name, obj, options
  out, i, n = [], 0, len(lines)
  base = min((_indent(l) for l in lines if l.strip()), default=0)
  while i < n:
    line = lines[i]
    if _SECTION.match(line):  # a Google section: napoleon's, left as written
      header = _indent(line)
      out.append(line)
      i += 1
      while i < n and (not lines[i].strip() or _indent(lines[i]) > header):
        if _indent(lines[i]) > header + 4 and out[-1].strip():  # a nested continuation
          out[-1] = out[-1].rstrip() + " " + _escape_prose(lines[i].strip())
        else:
          out.append(_escape_prose(lines[i]))
        i += 1
      continue
    is_table = line.lstrip().startswith("|")
    if line.strip() and _indent(line) > base and out and out[-1].strip() and not is_table:
      out[-1] = out[-1].rstrip() + " " + _escape_prose(line.strip())  # a continuation
      i += 1
      continue
    if is_table or (line.strip() and _indent(line) > base):
      # A literal block: the table, or the indented lines (and the blank lines between them).
      if out and out[-1].strip():
        out.append("")
      prose = next((k for k in range(len(out) - 1, -1, -1) if out[k].strip()), None)
      if prose is not None and out[prose].rstrip().endswith(":") and not is_table:
        out[prose] = out[prose].rstrip() + ":"
      else:
        out += [" " * base + "::", ""]
      while i < n and (lines[i].lstrip().startswith("|") if is_table else
                       (not lines[i].strip() or _indent(lines[i]) > base)):
        out.append("    " + lines[i] if is_table else lines[i])
        i += 1
      while out and not out[-1].strip():
        out.pop()
      out.append("")
      continue
    out.append(_escape_prose(line))
    i += 1
  lines[:] = out


def _write_api_page() -> None:
  """docs/api.md from the public modules' `__all__` (so a new name cannot be left out):
  `automodule` for the functions and classes, `autodata` for the constants, which automodule
  skips."""
  import importlib
  import inspect
  lines = ["# API reference", "",
           "Every public module of contrax and the names in its `__all__`. `import contrax` gives "
           "the modules as attributes (`contrax.losses.infonce`, `contrax.weights.ot`, "
           "`contrax.train.fit`). This page is generated by docs/conf.py.", ""]
  for module_name in sorted(contrax.__all__):
    module = importlib.import_module(f"contrax.{module_name}")
    lines += [f"## `contrax.{module_name}`", "", "```{eval-rst}",
              f".. automodule:: contrax.{module_name}", ""]
    for name in module.__all__:
      value = getattr(module, name)
      if not (inspect.isroutine(value) or inspect.isclass(value) or inspect.ismodule(value)):
        lines += [f".. autodata:: contrax.{module_name}.{name}", "   :annotation:", ""]
    lines += ["```", ""]
  text = "\n".join(lines)
  path = os.path.join(ROOT, "docs", "api.md")
  if not os.path.exists(path) or open(path).read() != text:
    with open(path, "w") as f:
      f.write(text)


_write_api_page()


def setup(app):
  app.connect("autodoc-process-docstring", _markdownish_to_rst, priority=100)
