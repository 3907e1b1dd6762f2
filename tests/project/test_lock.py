"""The lock, infra/constraints.txt: what `make`, CI and the container image install.

A fresh machine must get the versions the suite was run with, so the lock pins every package of
every extra within pyproject.toml's ranges, everything that installs from it uses it, and this
environment (built by `make` from it) holds exactly its versions.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "infra/constraints.txt"


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.!+_-]+)", line)
        assert match, f"infra/constraints.txt:{number}: not NAME==VERSION: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"infra/constraints.txt:{number}: {name} pinned twice"
        pins[name] = match.group(2)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += extra
    return [Requirement(text) for text in texts]


def test_the_lock_pins_every_requirement_of_every_extra_within_its_range():
    pins = _pins()
    assert "samdetr" not in pins  # the project itself installs from the checkout
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} (pyproject.toml) is not in the lock: run make constraints"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"the lock pins {name}=={pins[name]}, outside pyproject.toml's {requirement}: "
            "run make constraints")
        for extra in requirement.extras:  # ray[default,data,...]: what the extra pulls in
            wanted = metadata.requires(requirement.name) or []
            for text in wanted:
                dependency = Requirement(text)
                marker = dependency.marker
                if marker is None or not marker.evaluate({"extra": extra}):
                    continue
                assert canonicalize_name(dependency.name) in pins, (
                    f"{dependency.name} ({requirement.name}[{extra}]) is not in the lock")


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_this_environment_holds_exactly_the_locked_versions():
    """`make` installs with --constraint infra/constraints.txt: a package at another version
    means the environment was not built from the lock (or the lock changed since)."""
    different = []
    for name, pinned in _pins().items():
        found = _installed_version(name)
        if found is None:  # a platform's package (e.g. nvidia-*) on a machine without it
            continue
        if Version(found).public != Version(pinned).public:  # torch 2.14.1+cpu is 2.14.1
            different.append(f"{name}: installed {found}, locked {pinned}")
    assert not different, "not installed from the lock (make reinstalls .venv):\n" + "\n".join(
        different)


def test_the_installed_requirements_are_all_locked():
    """Every package this project's requirements pull in, recursively, is in the lock: else a
    fresh machine resolves it anew (the newest release on that day)."""
    pins = _pins()
    seen, missing = set(), []
    queue = [(r, frozenset(r.extras)) for r in _requirements()]
    while queue:
        requirement, extras = queue.pop()
        name = canonicalize_name(requirement.name)
        if (name, extras) in seen or _installed_version(requirement.name) is None:
            continue
        seen.add((name, extras))
        if name not in pins:
            missing.append(name)
        for text in metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            environment = [{"extra": e} for e in extras] or [{"extra": ""}]
            if dependency.marker is None or any(dependency.marker.evaluate(env)
                                                for env in environment):
                queue.append((dependency, frozenset(dependency.extras)))
    assert not missing, f"installed but not locked (run make constraints): {sorted(set(missing))}"


@pytest.mark.parametrize("path, line", [
    ("Makefile", "pip install --constraint $(LOCK)"),
    ("infra/docker/Dockerfile", "--constraint infra/constraints.txt"),
    (".ci/run", "make test"),
])
def test_everything_that_installs_uses_the_lock(path, line):
    assert line in (ROOT / path).read_text(), f"{path} does not install from the lock"
    if path == "Makefile":
        assert "LOCK := infra/constraints.txt" in (ROOT / path).read_text()
