"""Every entry point answers ``--help`` with exit status 0, saying what it does, where its
settings are and where its docs are (as a user's first command)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HYDRA_ENTRY_POINTS = ["train", "tune", "study", "evaluate", "predict", "promote", "preprocess",
                      "make_synthetic", "export"]


def _help(module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pipelines.{module}", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # a process each, ~5 s
@pytest.mark.parametrize("module", HYDRA_ENTRY_POINTS)
def test_hydra_entry_points_say_what_they_do_and_where_their_settings_are(module):
    done = _help(module)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"python -m pipelines.{module} [key=value ...]"
    assert "is powered by Hydra" not in done.stdout  # the project's text, not Hydra's default
    assert f"Settings: conf/{module}.yaml" in done.stdout
    docs = next(line for line in lines if line.startswith("Docs: "))
    assert (ROOT / docs.removeprefix("Docs: ")).is_file()
    assert "== Settings ==" in done.stdout and "output_root: outputs" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("module, first", [
    ("submit", "Run the project's pipelines as jobs on a Ray cluster"),
    ("demo", "usage: python -m pipelines.demo"),
])
def test_the_other_entry_points_answer_help_too(module, first):
    done = _help(module)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(first) or first in done.stdout.splitlines()[0]
