"""The layout of ``pipelines/`` holds (docs/architecture.md): entry modules at the top hold only
their ``main()`` and nothing imports them; the implementation sits in subpackages that import
only from their own package and from the layers below; every ``pipelines.*`` import is at module
level (no import hidden in a function to dodge a cycle); the module graph has no cycle.
``bench/`` never imports from ``tests/``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from test_layout import ROOT, imports, module_name, within

PIPELINES = ROOT / "pipelines"
#: The layer order, lowest first: a subpackage may import from its own package and from the
#: layers before its own, never from its own layer's other packages or a later layer.
LAYERS = (
    ("common",),
    ("data",),
    ("registry",),
    ("training",),
    ("inference",),
    ("promotion", "sweeps", "studies"),
    ("jobs",),
    ("cli",),
)
PACKAGES = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}
ENTRIES = sorted(p for p in PIPELINES.glob("*.py") if p.name != "__init__.py")
SOURCES = sorted(PIPELINES.rglob("*.py"))


def package_of(module: str) -> str | None:
    """``pipelines.<package>`` of a module in a subpackage, None for an entry module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in PACKAGES) else None


def pipeline_imports(path: Path) -> list[str]:
    return [m for m, _ in imports(path) if within(m, "pipelines") and m != "pipelines"]


def test_every_subpackage_has_a_layer():
    found = {p.name for p in PIPELINES.iterdir() if (p / "__init__.py").is_file()}
    assert found == set(PACKAGES), "add the new package to LAYERS (and docs/architecture.md)"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layer_order(path):
    name = module_name(path)
    own = package_of(name)
    for module in pipeline_imports(path):
        target = package_of(module)
        assert target is not None, f"{name} imports the entry module {module}"
        if own is None or target == own:
            continue  # entry modules may use every package
        assert PACKAGES[target] < PACKAGES[own], (
            f"{name} imports {module}: pipelines.{own} may use only "
            f"{[p for p, r in PACKAGES.items() if r < PACKAGES[own]]}"
        )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pipeline_imports_are_at_module_level(path):
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    hidden = [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top
        and any(within(m, "pipelines") for m, _ in _names(node))
    ]
    assert not hidden, (f"{path.relative_to(ROOT)}: pipelines imports inside functions, "
                        f"lines {hidden}")


def _names(node: ast.Import | ast.ImportFrom) -> list[tuple[str, None]]:
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    return [(node.module or "", None)]


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.name)
def test_entry_modules_hold_only_main(path):
    tree = ast.parse(path.read_text())
    defined = [n.name for n in tree.body
               if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
    assert defined == ["main"], f"{path.name} defines {defined}: keep only main()"
    assert ast.get_docstring(tree), f"{path.name} needs a docstring (its usage)"


def test_no_cycles():
    graph = {module_name(p): {m for m in pipeline_imports(p)} for p in SOURCES}
    for deps in graph.values():  # `from pipelines.x import y` names module pipelines.x
        deps.discard("pipelines")
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep] if dep in stack else [node, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_bench_does_not_import_tests(path):
    bad = [m for m, _ in imports(path) if within(m, "tests")]
    assert not bad, f"bench/{path.name} imports {bad}: move what it needs into the library"
    assert not re.search(r"sys\.path.*tests", path.read_text()), (
        f"bench/{path.name} puts tests/ on sys.path: move what it needs into the library")


BENCH = sorted(p for p in (ROOT / "bench").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", BENCH, ids=lambda p: p.name)
def test_every_bench_script_runs_as_a_module_of_the_bench_package(path):
    """``python -m bench.<name>`` from the repository root, the one way every bench runs: its
    sibling imports name ``bench.``, nothing edits sys.path, and its usage says so."""
    siblings = {p.stem for p in BENCH}
    bare = [m for m, _ in imports(path) if m in siblings]
    assert not bare, f"bench/{path.name} imports {bare}: write bench.{bare[0]}"
    text = path.read_text()
    assert "sys.path" not in text, f"bench/{path.name} edits sys.path"
    assert f"python -m bench.{path.stem}" in text or "__main__" not in text, (
        f"bench/{path.name}: its usage should say python -m bench.{path.stem}")
