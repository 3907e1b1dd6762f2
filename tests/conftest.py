"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# The read-only shared folder sits beside the repository: <repo>/../shared
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def coco128_dir() -> Path:
    """Folder of the small COCO subset: ``annotations.json`` and ``images/``."""
    path = SHARED_DIR / "data" / "coco128-dev"
    if not (path / "annotations.json").is_file():
        pytest.fail(f"coco128-dev data not found at {path} (expected ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def official_tiny_v2_dir() -> Path:
    """The stricter fixture: every tensor perturbed, 6 decoder layers (see its README)."""
    path = SHARED_DIR / "fixtures" / "official-tiny-v2"
    if not (path / "weights.pt").is_file():
        pytest.fail(f"official-tiny-v2 fixture missing at {path} (expected ../shared beside the "
                    "repo)")
    return path


@pytest.fixture(scope="session")
def official_tiny_dir() -> Path:
    """Weights, inputs and the official code's outputs for a small SAM-DETR (see its README)."""
    path = SHARED_DIR / "fixtures" / "official-tiny"
    if not (path / "weights.pt").is_file():
        pytest.fail(f"official-tiny fixture missing at {path} (expected ../shared beside the repo)")
    return path
