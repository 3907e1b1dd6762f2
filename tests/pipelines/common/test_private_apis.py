"""The private Ray and MLflow APIs the project relies on are still there, as used, in the pinned
versions: an upgrade that moves or reshapes one fails here, naming it, instead of deep in a run.
Ray's are all used through pipelines/common/ray_internals.py; MLflow's through the modules named
below. And no module but pipelines/common/tracking.py changes MLflow's process-wide state."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _parameters(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def test_ray_data_execution_callback_has_the_hooks_quiet_mode_uses():
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    assert callable(getattr(ExecutionCallback, "before_execution_starts", None))


def test_ray_data_block_shuffle_internals():
    import ray.data
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import RandomizeBlocks
    from ray.data._internal.random_config import SeedTuple

    assert {"seed_config", "input_dependencies"} <= _parameters(RandomizeBlocks.__init__)
    assert len(_parameters(LogicalPlan.__init__) - {"self"}) >= 2  # (dag, context)
    assert callable(getattr(ray.data.Dataset, "_from_parent", None))
    assert "seed" in _parameters(SeedTuple)
    assert callable(getattr(ray.data.RandomSeedConfig, "get_seed_tuple", None))


@pytest.mark.integration
def test_ray_data_block_shuffle_runs():
    """The planned shuffle executes and keeps every row (a real Ray, local, one CPU)."""
    import ray

    from pipelines.common.ray_internals import randomize_blocks

    # A fresh instance, never one another process started on this machine.
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        rows = ray.data.range(40, override_num_blocks=8)
        shuffled = randomize_blocks(rows, ray.data.RandomSeedConfig(seed=3))
        assert sorted(r["id"] for r in shuffled.take_all()) == list(range(40))
    finally:
        ray.shutdown()


def test_ray_train_context_logger_and_worker_mode():
    import ray
    from ray.train.v2._internal.execution import context as train_context

    from pipelines.common.ray_internals import in_ray_worker, train_context_logger

    assert train_context_logger() is getattr(train_context, "logger", None)
    assert train_context_logger() is not None
    assert hasattr(ray._private.worker, "global_worker") and hasattr(ray, "WORKER_MODE")
    assert in_ray_worker() is False  # the test process is no Ray worker


def test_tqdm_ray_bar_internals_the_one_line_bar_overrides():
    from ray.experimental import tqdm_ray

    for name in ("_dump_state", "_get_state"):
        assert callable(getattr(tqdm_ray.tqdm, name, None)), name
    bar = tqdm_ray.tqdm(total=2, desc="check")
    assert hasattr(bar, "_last_flush_time") and hasattr(bar, "_flush_interval_s")
    bar.close()


def test_tune_asha_internals():
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from pipelines.common.ray_internals import asha_brackets, asha_rungs, asha_sign

    scheduler = AsyncHyperBandScheduler(metric="AP", mode="max", max_t=4, grace_period=1)
    assert asha_sign(scheduler) == 1.0
    brackets = asha_brackets(scheduler)
    assert brackets
    rungs = asha_rungs(brackets[0])
    assert all(isinstance(recorded, dict) for _, recorded in rungs)
    assert [milestone for milestone, _ in rungs] == sorted(
        (milestone for milestone, _ in rungs), reverse=True)


def test_mlflow_internals():
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    assert {"client", "models_uri"} <= _parameters(get_model_name_and_version)
    assert callable(resolve_dataset_source)


MLFLOW_GLOBALS = {"set_tracking_uri", "set_registry_uri", "start_run", "end_run",
                  "set_experiment", "autolog"}
OWNER = ROOT / "pipelines" / "common" / "tracking.py"


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_mlflow_global_state_changes_in_one_place(path):
    if path == OWNER:
        return
    tree = ast.parse(path.read_text())
    calls = [
        f"line {node.lineno}: mlflow.{node.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr in MLFLOW_GLOBALS
        and isinstance(node.func.value, ast.Name) and node.func.value.id == "mlflow"
    ]
    environ = [
        f"line {node.lineno}: os.environ[{ast.unparse(node.slice)}]"
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ"
        and "MLFLOW" in ast.unparse(node.slice)
    ]
    assert not calls + environ, (
        f"{path.relative_to(ROOT)} changes MLflow's process-wide state ({calls + environ}): "
        "use pipelines.common.tracking (using_store, in_run)")
