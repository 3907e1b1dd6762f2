"""Every use of Ray's private APIs, in one place (Ray 2.60, as pinned in infra/constraints.txt).

Ray gives no public way to do these; each is a small, named function here, and
``tests/pipelines/common/test_private_apis.py`` checks every name and signature they rely on
against the
installed Ray, so an upgrade that moves one fails there, loudly, instead of deep in a run.

- Ray Data: the execution callback class (quiet mode), and a block-order shuffle that keeps a
  custom seed config (``Dataset.randomize_block_order`` would copy it into a plain one).
- Ray Train 2: the logger of its execution context (its per-report INFO line).
- Ray core: whether this process is a Ray worker (tqdm_ray's bar is drawn or sent).
- Ray Tune: the rungs of an ASHA bracket (restored from the sweep's histories).
"""

from __future__ import annotations

import logging
from typing import Any

from ray.data._internal import random_config as _random_config

try:
    from ray.data._internal.execution import execution_callback as _execution_callback
except ImportError:  # another Ray layout: quiet mode leaves the callback out
    _execution_callback = None

#: Ray Data's hook into the process that executes a Dataset (None in another Ray layout).
ExecutionCallback = getattr(_execution_callback, "ExecutionCallback", None)



#: Ray Data's seed pair, what a ``RandomSeedConfig`` returns for each execution.
SeedTuple = _random_config.SeedTuple


def train_context_logger() -> logging.Logger | None:
    """The logger Ray Train 2.60 writes "Reporting training result N" with, on every rank at every
    report (``logging.getLogger(__file__)`` of its execution-context module, so outside the
    ``ray.train`` logger that ``LoggingConfig`` sets); None in another Ray layout."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:
        return None
    found = getattr(train_context, "logger", None)
    return found if isinstance(found, logging.Logger) else None


def in_ray_worker() -> bool:
    """This process is a Ray worker (a task or actor), not the driver."""
    import ray

    return ray._private.worker.global_worker.mode == ray.WORKER_MODE


def randomize_blocks(rows: Any, seed_config: Any) -> Any:
    """``rows`` (a ``ray.data.Dataset``) with its blocks in the order ``seed_config`` gives
    (a ``RandomSeedConfig``, subclass included), planned lazily as Ray's own shuffle is."""
    import ray.data
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import RandomizeBlocks

    op = RandomizeBlocks(seed_config=seed_config, input_dependencies=[rows._logical_plan.dag])
    return ray.data.Dataset._from_parent(rows, LogicalPlan(op, rows.context))


def asha_rungs(bracket: Any) -> list[tuple[float, dict[str, float]]]:
    """``[(milestone, {trial_id: recorded value})]`` of one bracket of Tune's
    ``AsyncHyperBandScheduler`` (the dicts are the scheduler's own: filling them restores it)."""
    return bracket._rungs


def asha_brackets(scheduler: Any) -> list[Any]:
    """The brackets of Tune's ``AsyncHyperBandScheduler``."""
    return scheduler._brackets


def asha_sign(scheduler: Any) -> float:
    """+1 or -1: what the scheduler multiplies results by so that larger is better."""
    return scheduler._metric_op
