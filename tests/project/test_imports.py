"""The core package must stay free of the pipeline stack (slow, heavy imports)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("ray", "mlflow", "hydra", "omegaconf")


def test_import_samdetr_pulls_in_no_pipeline_packages():
    code = (
        "import json, sys, samdetr\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`import samdetr` imported {loaded}"


def test_version_is_a_string():
    import samdetr

    assert isinstance(samdetr.__version__, str) and samdetr.__version__


def test_no_samdetr_module_imports_pipeline_packages():
    # Every submodule, not just the package: the rule is for all code under samdetr/.
    code = (
        "import importlib, json, pkgutil, sys, samdetr\n"
        "for info in pkgutil.walk_packages(samdetr.__path__, 'samdetr.'):\n"
        "    importlib.import_module(info.name)\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing samdetr.* imported {loaded}"
