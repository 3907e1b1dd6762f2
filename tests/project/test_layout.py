"""The package layout holds: model and data never import each other, only the engine (and the
top-level modules) join them, nothing in samdetr imports the pipeline stack, and every name is
imported from the module that defines it (no re-exports, except the public API in
``samdetr/__init__.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "samdetr"
HEAVY = {"ray", "mlflow", "hydra", "omegaconf"}
# What each subpackage may import from samdetr besides itself.
ALLOWED = {
    "samdetr.model": {"samdetr.batching"},
    "samdetr.data": {"samdetr.batching"},
    "samdetr.engine": {"samdetr.batching", "samdetr.config", "samdetr.model", "samdetr.data"},
    "samdetr.export": {"samdetr.batching", "samdetr.config", "samdetr.model"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in ``path``, relative imports made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_subpackages_import_only_what_they_may(path):
    name = module_name(path)
    for package, allowed in ALLOWED.items():
        if not within(name, package):
            continue
        for module, _ in imports(path):
            if within(module, "samdetr"):
                ok = within(module, package) or any(within(module, a) for a in allowed)
                assert ok, f"{name} imports {module}: {package} may only use {sorted(allowed)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pipeline_stack_in_the_library(path):
    heavy = {m for m, _ in imports(path) if m.split(".")[0] in HEAVY}
    assert not heavy, f"{module_name(path)} imports {sorted(heavy)}"


def defined_names(path: Path) -> set[str]:
    """Top-level names that ``path`` defines itself (not the ones it imports)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def source_of(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


USERS = sorted(
    p
    for folder in ("samdetr", "pipelines", "tests", "bench", "examples")
    for p in (ROOT / folder).rglob("*.py")
    if "fixtures" not in p.parts
)


@pytest.mark.parametrize("path", USERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_names_come_from_their_owner(path):
    for module, names in imports(path):
        # `samdetr` itself is the public API: it re-exports on purpose.
        if module == "samdetr" or not (within(module, "samdetr") or within(module, "pipelines")):
            continue
        source = source_of(module)
        assert source is not None, f"{path.name} imports {module}, which does not exist"
        own = defined_names(source)
        for name in names:
            submodule = source.name == "__init__.py" and source_of(f"{module}.{name}")
            assert name in own or submodule, (
                f"{path.relative_to(ROOT)} imports {name} from {module}, which does not define it"
            )


def test_few_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top
