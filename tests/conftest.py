"""Shared pytest fixtures, and the suite's tiers.

Every test is ``unit`` or ``integration`` (markers registered in pyproject.toml), decided here at
collection: ``integration`` when it uses one of :data:`INTEGRATION_FIXTURES` (a real Ray, a
cluster, an MLflow or S3 server, a training run) or lives in one of :data:`INTEGRATION_MODULES`
(whose tests start those themselves, or run the commands in new interpreters), or marked
``@pytest.mark.integration`` by hand; ``unit`` otherwise. ``make test-fast`` runs the unit tier
on every core; ``make test`` runs both, each tier in parallel (pytest-xdist): the unit tier
test by test on every core, the integration tier module by module on two processes (its
fixtures are module-wide), slowest modules first (:data:`SLOWEST_MODULES`).

Tests in parallel processes must not see each other's Ray: each xdist worker gets its own Ray
temp folder (``RAY_TMPDIR``), where ``ray start`` and ``ray.cluster_utils.Cluster`` leave the
address that a plain ``ray.init()`` attaches to."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Ray 2.60 turns token auth on at the first ray.init() of a process that has no RAY_AUTH_MODE,
# and that process then cannot start a Ray with auth disabled, as every test here does: so the
# mode is set before any test, whatever test runs first. Tests that want token auth set it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... under pytest-xdist
_RAY_TMPDIR = None  # the Ray temp folder made for this worker, removed at its end
if _WORKER and "RAY_TMPDIR" not in os.environ:
    # Short: Ray's socket paths under it are capped at 107 characters.
    _RAY_TMPDIR = os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=f"ray-{_WORKER}-", dir="/tmp")

#: Fixtures that start something real and slow: a Ray instance or cluster, a server, a run.
INTEGRATION_FIXTURES = frozenset({
    "local_ray", "cluster", "ray_s3", "s3", "shared_server", "server", "registry", "head",
    "workspace", "sweep", "candidate", "elsewhere",
})
#: Modules whose tests start Ray, servers or new interpreters in the test body.
INTEGRATION_MODULES = frozenset({
    "test_backbone_weights", "test_bench_from_scratch", "test_cluster", "test_console",
    "test_entry_help", "test_epoch_clock", "test_evaluate_paths", "test_examples",
    "test_gpu_check", "test_image", "test_imports", "test_mlflow_auth", "test_mlflow_deploy",
    "test_mlflow_model", "test_object_store", "test_overfit", "test_predict",
    "test_preprocess_ray", "test_promotion", "test_ray_data_training", "test_registry",
    "test_run_identity", "test_run_storage", "test_study", "test_submit",
    "test_sweep_scheduler", "test_tracking", "test_tracking_uri", "test_train_config",
    "test_train_pipeline", "test_train_s3", "test_trainer", "test_tune", "test_uneven_ddp",
})


#: The integration modules that take longest (seconds measured one after another on 2 cores),
#: slowest first: run first, so that no slow module starts last while the other process idles.
SLOWEST_MODULES = (
    "test_cluster", "test_train_pipeline", "test_tune", "test_submit", "test_console",
    "test_tracking", "test_train_s3", "test_registry", "test_study", "test_ray_data_training",
    "test_entry_help", "test_mlflow_auth", "test_gpu_check",
)


def _module(item: pytest.Item) -> str:
    return item.module.__name__.rpartition(".")[2] if item.module else ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("integration"):  # marked by hand: one test of a unit module
            continue
        heavy = (_module(item) in INTEGRATION_MODULES
                 or INTEGRATION_FIXTURES & set(item.fixturenames))
        item.add_marker(pytest.mark.integration if heavy else pytest.mark.unit)
    rank = {name: i for i, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(_module(item), len(rank)))  # stable: the rest in order


def pytest_unconfigure(config: pytest.Config) -> None:
    if _RAY_TMPDIR is not None:
        shutil.rmtree(_RAY_TMPDIR, ignore_errors=True)


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
