"""The layout's invariants (docs/ARCHITECTURE.md), checked on the source: imports run one way.

Every `import` statement of every module under medpalm/ and tasks/ is read from its syntax tree,
function-level imports included (a local import is still a dependency). From that graph:
no cycle between files, no cycle between packages, and the layering rules hold.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("medpalm", "tasks")
# Application layers: they sit on top of the library and the tasks, and may import both.
APPLICATIONS = ("medpalm.demo", "medpalm.main", "medpalm.rater")


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for package in PACKAGES:
    for path in sorted((REPO / package).rglob("*.py")):
      out[_module_name(path)] = path
  return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
  """The project module `name` refers to (a module, or the package holding a name), or None."""
  while name:
    if name in MODULES:
      return name
    name = name.rpartition(".")[0]
  return None


def _imports(module: str) -> set[str]:
  """Project modules that `module` imports anywhere in its body."""
  path = MODULES[module]
  tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from a.b import c`: the module a.b.c, or a.b when c is a name defined in it.
      names = [f"{base}.{alias.name}" for alias in node.names]
    else:
      continue
    for name in names:
      target = _resolve(name)
      if target and target != module:
        found.add(target)
  return found


GRAPH = {module: _imports(module) for module in MODULES}


def _package(module: str) -> str:
  """The architectural unit of a module: medpalm.<subpackage>, top-level medpalm, or tasks."""
  parts = module.split(".")
  if parts[0] == "tasks":
    return "tasks"
  if module in APPLICATIONS or any(module.startswith(a + ".") for a in APPLICATIONS):
    return module if module in APPLICATIONS else ".".join(parts[:2])
  if len(parts) > 2 or (len(parts) == 2 and (REPO / "medpalm" / parts[1]).is_dir()):
    return ".".join(parts[:2])
  return "medpalm"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one node (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
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
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_import_walk_sees_the_known_edges():
  """Guards the walk itself: edges that exist must be found (a walk that finds none passes all)."""
  assert "medpalm.features" in GRAPH["tasks.features"]
  assert "medpalm.driver.trainer" in GRAPH["medpalm.driver.train"]
  assert "medpalm.evaluation.runner" in GRAPH["medpalm.evaluation.evaluator"]
  assert "medpalm.models.configs" in GRAPH["medpalm.models.medpalm_m"]
  assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycle_between_files():
  assert _cycles(GRAPH) == []


def test_no_import_cycle_between_packages():
  packages: dict[str, set[str]] = {}
  for module, targets in GRAPH.items():
    edges = packages.setdefault(_package(module), set())
    edges.update(_package(t) for t in targets if _package(t) != _package(module))
  assert _cycles(packages) == []


def _violations(rule) -> list[str]:
  return sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if rule(m, t))


def test_only_applications_import_tasks():
  """The library takes task-specific behaviour through the SeqIO registry,
  `medpalm.features.task_info` or gin, never by importing `tasks`."""
  library = lambda m: m.startswith("medpalm") and _package(m) not in APPLICATIONS
  assert _violations(lambda m, t: library(m) and t.startswith("tasks")) == []


def test_tasks_import_only_the_feature_converter_of_medpalm():
  assert (
      _violations(
          lambda m, t: m.startswith("tasks") and t.startswith("medpalm") and t != "medpalm.features"
      )
      == []
  )


def test_models_import_nothing_outside_models():
  """Flax modules and configs map arrays to arrays: no mesh, no driver, no data."""
  assert (
      _violations(
          lambda m, t: m.startswith("medpalm.models") and not t.startswith("medpalm.models")
      )
      == []
  )


def test_evaluation_never_imports_the_driver():
  assert (
      _violations(
          lambda m, t: m.startswith("medpalm.evaluation") and t.startswith("medpalm.driver")
      )
      == []
  )


@pytest.mark.parametrize("modules", ["medpalm.model, medpalm.models", "medpalm.decoding"])
def test_the_model_contract_imports_without_tensorflow(modules):
  """A MaxText or big_vision user who wants the loss and decoding does not pay for TensorFlow
  (about 10 s to import here)."""
  code = (
      f"import sys, {modules}; "
      "print(sorted(m for m in ('tensorflow', 'seqio', 'tasks') if m in sys.modules))"
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env
  )
  assert out.stdout.strip().splitlines()[-1] == "[]"
