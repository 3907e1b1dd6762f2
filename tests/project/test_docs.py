"""The README and docs/ hold: every relative link resolves (file and heading anchor), and the
README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of the headings of ``path``."""
    out = set()
    for line in prose(path).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            out.add(title.replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    for target in LINK.findall(prose(doc)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.exists(), f"{doc.name}: link to missing {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{doc.name}: no heading for {target}"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


MAKE = re.compile(r"`make ([a-z][a-z-]*)")
#: Files and folders the docs name in backticks, e.g. `pipelines/training/run.py`.
PATH = re.compile(r"`((?:samdetr|pipelines|tests|bench|conf|infra|docs|examples)/[\w./-]*)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_make_targets_named_in_the_docs_exist(doc):
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    missing = set(MAKE.findall(doc.read_text())) - targets
    assert not missing, f"{doc.name} names make targets the Makefile lacks: {sorted(missing)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_paths_named_in_the_docs_exist(doc):
    missing = [p for p in PATH.findall(doc.read_text())
               if "*" not in p and not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"
