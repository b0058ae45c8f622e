"""Check a built docs site: every public name has an API entry, every notebook page shows its
figures. Run by .ci/run after `sphinx -W`:

    python docs/check_site.py docs/_build/html
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import contrax  # noqa: E402
from test_notebooks import FIGURES  # noqa: E402  (the figures each notebook draws)


def main(site: str) -> int:
  problems = []
  api = open(os.path.join(site, "api.html")).read()
  for module_name in contrax.__all__:
    module = importlib.import_module(f"contrax.{module_name}")
    for name in module.__all__:
      target = getattr(module, name)
      if inspect.ismodule(target):  # a submodule re-exported by a package
        continue
      # Re-exports (e.g. contrax.losses.infonce) are documented where they are defined.
      home = getattr(target, "__module__", None) if callable(target) else None
      ids = {f'id="contrax.{module_name}.{name}"'}
      if home and home.startswith("contrax"):
        ids.add(f'id="{home}.{name}"')
      if not any(i in api for i in ids):
        problems.append(f"api.html has no entry for contrax.{module_name}.{name}")
  for notebook, figures in FIGURES.items():
    page = open(os.path.join(site, "notebooks", notebook.replace(".ipynb", ".html"))).read()
    drawn = len(re.findall(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', page))
    if drawn < figures:
      problems.append(f"notebooks/{notebook}: {drawn} figures on the page, expected {figures}")
  for problem in problems:
    print(problem)
  print(f"{len(problems)} problems" if problems else "the site documents every public name")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "_build",
                                                                   "html")))
