"""The import graph of moe_jax/ and experiments/ is a DAG that follows the agreed layering.

Every `import` and `from ... import` is read with `ast`, at module level and inside functions
(a function-level import is still a dependency: it only moves the circle from import time to
call time). An import resolves to modules like this:

- `import a.b.c` and `from a.b.c import name` depend on `a.b.c`; `from a.b import c` depends
  on the submodule `a.b.c` when there is one, else on the package `a.b` (its `__init__.py`,
  which defines `name`). Relative imports are resolved against the importing module.
- Importing `a.b.c` also runs the `__init__.py` of the packages `a.b` and `a`, so it depends on
  them too, except on the importer's own enclosing packages: Python has already started those
  before it runs the importer. So a package `__init__` that re-exports its children is not a
  circle with them; a child that imports a name defined in its package's `__init__` (a
  registry's `register` defined in an `__init__` that then imports the child) is one: it works
  only while the `__init__` defines the name before that import. Registries live in their own
  module (routing/registry.py, tasks/registry.py).

Checked: (a) no circle, reported as a path `a -> b -> ... -> a` with the line of each import;
(b) every module has a rank (RANKS) and imports nothing of a higher rank.
"""
from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
ROOTS = ("moe_jax", "experiments")

# The layers, lowest first: a module may import modules of its own rank or lower, never higher.
# A module's rank is that of the longest entry that is it or a package containing it; every
# module must have one, so a new top-level module or package has to be placed here.
RANKS = {
    # leaf utilities: they import no moe_jax module outside their own rank
    "moe_jax": 0, "moe_jax.validation": 0, "moe_jax.registry": 0, "moe_jax.parallel": 0,
    "moe_jax.workdir": 0,
    "moe_jax.checkpoint": 0, "moe_jax.run_log": 0, "moe_jax.interrupts": 0,
    "moe_jax.plots": 0,
    # the parts of one MoE layer, then the layer
    "moe_jax.routing": 1, "moe_jax.dispatch": 1, "moe_jax.experts": 1,
    "moe_jax.null_experts": 1,
    "moe_jax.layer": 2, "moe_jax.moe_config": 2,
    # models and their data
    "moe_jax.models": 3, "moe_jax.data": 3,
    # the train and eval steps: a task's loss and eval sums come in as arguments
    "moe_jax.train_step": 4, "moe_jax.eval_step": 4,
    # what a run computes, by name (config.task)
    "moe_jax.tasks": 5, "moe_jax.sampling": 5,
    # a run's validated config: it checks config.task and the task's data against the
    # registered tasks, so it sits above them (a task gets a teacher's config through the
    # run services that run setup provides, moe_jax/tasks/base.py)
    "moe_jax.config": 6, "moe_jax.model_section": 6, "moe_jax.overrides": 6,
    # opening a run: model and optimizer on the mesh, tokenizer, which checkpoint to restore
    "moe_jax.run_setup": 7, "moe_jax.run_workdir": 7,
    # upcycling's parameter transforms (pure: models' params and optimizer state in and out)
    "moe_jax.upcycle_params": 7,
    # the commands
    "moe_jax.train": 8, "moe_jax.evaluate": 8, "moe_jax.generate": 8, "moe_jax.upcycle": 8,
    "moe_jax.hf": 8,
    "moe_jax.cli": 8,
    # sweeps through the public train / evaluate API
    "experiments": 9,
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def modules(roots=ROOTS) -> dict[str, pathlib.Path]:
  """{dotted module name: file} of every .py file under `roots` (a package by its name)."""
  return {_module_name(p): p for root in roots for p in sorted((REPO / root).rglob("*.py"))}


def _ancestors(name: str) -> list[str]:
  parts = name.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


def _package_of(name: str, is_package: bool) -> str:
  return name if is_package else name.rpartition(".")[0]


def imports_of(name: str, source: str, known, *, is_package: bool = False):
  """[(imported module, line)] of module `name`'s source: every import statement, also inside
  functions, resolved to the modules in `known` it runs (see the module docstring)."""
  own = set(_ancestors(name)) | ({name} if is_package else set())
  out = []

  def add(target: str, line: int, explicit: bool = True):
    # An explicit target that is not a known module: its longest known enclosing package.
    while target and target not in known:
      target = target.rpartition(".")[0]
    if not target:
      return
    if explicit and target != name:
      out.append((target, line))
    for package in _ancestors(target) + ([] if explicit else [target]):
      if package not in own and package in known and package != name:
        out.append((package, line))

  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      for alias in node.names:
        add(alias.name, node.lineno)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = _package_of(name, is_package)
        for _ in range(node.level - 1):
          base = base.rpartition(".")[0]
        base = ".".join(filter(None, [base, node.module]))
      else:
        base = node.module
      for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in known:
          add(submodule, node.lineno)
          add(base, node.lineno, explicit=False)     # the package's __init__ runs first
        else:
          add(base, node.lineno)
  return out


def import_graph(roots=ROOTS) -> dict[str, dict[str, int]]:
  """{module: {imported module: line of the first such import}}."""
  files = modules(roots)
  graph = {}
  for name, path in files.items():
    edges: dict[str, int] = {}
    for target, line in imports_of(name, path.read_text(), files,
                                   is_package=path.name == "__init__.py"):
      edges.setdefault(target, line)
    graph[name] = edges
  return graph


def _strongly_connected(graph) -> list[list[str]]:
  """Tarjan's components with more than one module (or a module importing itself)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in graph[v]:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _shortest_cycle(graph, start: str, members: set[str]) -> list[str]:
  """A shortest circle from `start` back to it inside `members`, as a path."""
  previous, frontier = {start: None}, [start]
  while frontier:
    following = []
    for v in frontier:
      for w in sorted(graph[v]):
        if w == start:
          path = [v]
          while previous[path[-1]] is not None:
            path.append(previous[path[-1]])
          return path[::-1] + [start]
        if w in members and w not in previous:
          previous[w] = v
          following.append(w)
    frontier = following
  raise AssertionError(f"no circle through {start}")


def circles(graph) -> list[list[str]]:
  """For every circular component, a shortest circle through each of its modules (each
  circle once, starting from its first module by name)."""
  out = []
  for component in _strongly_connected(graph):
    for start in component:
      cycle = _shortest_cycle(graph, start, set(component))[:-1]
      first = cycle.index(min(cycle))
      cycle = cycle[first:] + cycle[:first + 1]
      if cycle not in out:
        out.append(cycle)
  return out


def describe_cycle(graph, cycle: list[str]) -> str:
  hops = " -> ".join(cycle)
  lines = [f"  {a} -> {b}  ({modules()[a].relative_to(REPO)}:{graph[a][b]})"
           for a, b in zip(cycle, cycle[1:])]
  return "\n".join([hops] + lines)


def rank_of(name: str) -> int | None:
  for prefix in sorted(RANKS, key=len, reverse=True):
    if name == prefix or (prefix != "moe_jax" and name.startswith(prefix + ".")):
      return RANKS[prefix]
  return None


def test_the_resolver_sees_function_level_relative_and_package_imports():
  known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "other"}
  source = ("from pkg import a\n"
            "def f():\n"
            "  from .sub import c\n"
            "  import other\n"
            "  from pkg.sub import NAME\n"
            "  from . import b\n")
  assert sorted(imports_of("pkg.b", source, known)) == [
      ("other", 4), ("pkg.a", 1), ("pkg.sub", 3), ("pkg.sub", 3), ("pkg.sub", 5),
      ("pkg.sub.c", 3)]
  # an __init__ importing its children: edges down only; a child importing a name defined
  # in its package's __init__ depends on it
  assert imports_of("pkg", "from pkg import a, b\n", known, is_package=True) == [
      ("pkg.a", 1), ("pkg.b", 1)]
  assert imports_of("pkg.a", "from pkg import register\n", known) == [("pkg", 1)]
  # importing a submodule of another package runs that package's __init__ too
  assert imports_of("other", "import pkg.sub.c\n", known) == [
      ("pkg.sub.c", 1), ("pkg", 1), ("pkg.sub", 1)]


def test_the_graph_has_every_module_and_sees_function_level_imports():
  graph = import_graph()
  assert {"moe_jax.config", "moe_jax.tasks", "moe_jax.tasks.lm", "experiments.harness"} <= set(
      graph)
  assert "moe_jax.cli" in graph["moe_jax.train"]       # imported inside main()


def test_no_import_circle():
  graph = import_graph()
  found = circles(graph)
  assert not found, "import circle(s), function-level imports included:\n" + "\n".join(
      describe_cycle(graph, c) for c in found)


def test_every_module_has_a_rank():
  unranked = sorted(name for name in import_graph() if rank_of(name) is None)
  assert not unranked, f"modules with no layer: {unranked}; place them in RANKS"


def test_no_import_from_a_lower_layer_to_a_higher_one():
  graph = import_graph()
  upward = [f"{modules()[a].relative_to(REPO)}:{line}: {a} (rank {rank_of(a)}) imports {b} "
            f"(rank {rank_of(b)})"
            for a, edges in sorted(graph.items()) for b, line in sorted(edges.items())
            if rank_of(a) is not None and rank_of(b) is not None and rank_of(a) < rank_of(b)]
  assert not upward, "imports that go up the layering:\n" + "\n".join(upward)
