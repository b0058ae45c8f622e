"""The contrax import graph is acyclic (an import cycle makes `import contrax.X` order-dependent).

Built from the AST of every module, function-level (lazy) imports included: an edge A -> B for
each `import B` / `from B import name` in A, where `from B import name` points at the module
`B.name` when that is a module of the package, else at B.
"""
from __future__ import annotations

import ast
import pathlib

import contrax

PACKAGE = pathlib.Path(contrax.__file__).parent


def module_name(path: pathlib.Path) -> str:
  parts = ("contrax",) + path.relative_to(PACKAGE).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        edges.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                          + ([base] if base else []))
        for alias in node.names:
          target = f"{base}.{alias.name}"
          edges.add(target if target in modules else base)
    graph[name] = {e for e in edges if e in modules and e != name}
  return graph


def find_cycle(graph: dict[str, set[str]]):
  """A list of modules forming a cycle, or None (depth-first search with colours)."""
  colour, stack = {}, []

  def visit(node):
    colour[node] = "grey"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if colour.get(nxt) == "grey":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in colour:
        found = visit(nxt)
        if found:
          return found
    colour[node] = "black"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in colour:
      found = visit(node)
      if found:
        return found
  return None


def test_the_import_graph_is_acyclic():
  graph = import_graph()
  assert {"contrax.pairs", "contrax.weights", "contrax.objectives", "contrax.losses.infonce",
          "contrax.losses.tiled"} <= set(graph)
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_checker_finds_a_cycle():
  """The two cycles the redesign removed, as the checker would have seen them."""
  assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
  assert find_cycle({"alpha_cl": {"negatives"}, "negatives": {"losses"},
                     "losses": {"alpha_cl"}}) is not None
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_lazy_imports():
  graph = import_graph()
  assert "contrax.losses.tiled" in graph["contrax.losses.infonce"]
  assert "contrax.pairs" in graph["contrax.weights"]
