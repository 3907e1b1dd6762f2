"""What the console shows: the project's own lines, one progress bar per epoch, and Ray's
warnings and errors; Ray's progress bars and INFO logs only with ``verbose``.

    connect(address, verbose=False)         # the driver: ray.init (if needed) + quiet_driver
    quiet_driver(verbose)                   # the driver, before a Ray Dataset is built
    train_logging_config(verbose)           # RunConfig(logging_config=...): controller, workers
    quiet_worker(verbose)                   # each Ray Train worker, first thing in its loop
    EpochBar(...)                           # rank 0's bar, drawn on the driver by tqdm_ray

What each Ray 2.60 knob silences (checked on a tiny run, see docs/training.md "Console"):

- ``ray.init(logging_level=WARNING)``: the driver's ``ray`` logger ("Started a local Ray
  instance ...").
- ``ray.init(logging_config=ray.LoggingConfig(log_level="WARNING"))``: the root and ``ray``
  loggers of every worker process of the job; and as a job logging config is set, Ray no
  longer puts ``(RayTrainWorker pid=...)`` before the lines it forwards to the driver. (Its
  price: a warning logged through those loggers in a worker ends with ``job_id=...
  worker_id=... node_id=...``; on the driver :func:`connect` keeps the loggers as they were.)
  Only where :func:`connect` starts Ray: a Ray started elsewhere keeps its own settings.
- ``ray.init(log_to_driver=False)`` would silence the workers, but also the epoch lines and
  the progress bar, which come from rank 0: not used for training.
- ``RunConfig(logging_config=ray.train.LoggingConfig(log_level="WARNING"))``: Ray Train's
  ``ray.train`` loggers in the controller and the workers ("Requesting resources", "Started
  training worker group", "Moving model to device", "Checkpoint successfully created at").
- Ray Train's "Reporting training result N: TrainingReport(...)" is logged by a logger named
  after its module's *file* (not under ``ray.train``), so LoggingConfig misses it;
  :func:`quiet_worker` raises that logger's level in the worker.
- ``DataContext.print_on_execution_start = False``: "Starting execution of Dataset" and
  "Execution plan of Dataset"; ``DataContext.enable_progress_bars = False``: Ray Data's bars
  (tqdm) and, where stdout is no terminal, its progress log lines (logging_progress.py). The
  DataContext travels with the Dataset into the processes that execute it (the driver when
  preprocessing, Ray Train's SplitCoordinator actor when training).
- Ray Data logs "Dataset ... execution finished in N seconds" at INFO whatever the
  DataContext says, and "Progress bars disabled. To enable, ..." once per process when bars
  are off, through its own ``ray.data`` handlers (not the ``ray`` logger, so neither
  LoggingConfig reaches them). Quiet mode lets those handlers pass only warnings and errors,
  without that notice, in every process that executes a Dataset: :class:`QuietRayData`, an
  execution callback in ``DataContext.custom_execution_callback_classes``, does it there.
- Ray Train's own ``default_ingest_options()`` sets the deprecated
  ``ExecutionOptions.exclude_resources`` (a RayDeprecationWarning every run);
  ``pipelines.data.ingest.EveryImageDataConfig`` ignores that one warning.
- ``RAY_TRAIN_ENABLE_PRINT_PATCH=0`` in the job's ``runtime_env`` (where :func:`connect`
  starts Ray): Ray Train's workers keep the builtin ``print``, so redirecting stdout silences
  pycocotools' reports during evaluation again and each progress-bar state is sent once.
- Not silenced: Ray's C++ error lines (e.g. ``core_worker.cc`` on the PreemptionWatcher actor's
  constructor arguments) and the raylet's warnings: they are errors and warnings.

``verbose=True`` puts every knob back to Ray's default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from pipelines.common.ray_internals import ExecutionCallback, in_ray_worker, train_context_logger

#: Ray Data settings that quiet mode changes, with their values when quiet.
_QUIET_DATA = {"print_on_execution_start": False, "enable_progress_bars": False}
#: Environment of the job's workers in quiet mode: Ray Train's print() patch off.
_QUIET_WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
#: Ray Data's notice, once per process, that the progress bars are off (quiet mode's doing).
_BARS_OFF_NOTICE = "Progress bars disabled"


def ray_level(verbose: bool) -> int:
    """The level of Ray's own loggers: INFO (Ray's default) with ``verbose``, else WARNING."""
    return logging.INFO if verbose else logging.WARNING


def connect(address: str | None = None, *, verbose: bool = False, log_to_driver: bool = True,
            **init_kwargs: Any) -> None:
    """``ray.init`` unless Ray is up already (then its settings stay as they are), with Ray's
    INFO logs off unless ``verbose``; then :func:`quiet_driver`.

    ``log_to_driver``: the workers' output (the epoch lines and progress bar) comes to this
    console; keep it on for training.
    """
    import ray

    if not ray.is_initialized():
        if verbose:
            ray.init(address=address, log_to_driver=log_to_driver, **init_kwargs)
        else:
            # Ray Train workers replace print() by one that also logs each line, which shows
            # it on the driver even where the caller redirected stdout (pycocotools' reports
            # inside samdetr.engine.coco_eval) and twice where it did not (tqdm_ray's states).
            runtime_env = dict(init_kwargs.pop("runtime_env", None) or {})
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **_QUIET_WORKER_ENV}
            with _driver_logging_kept():
                ray.init(address=address, log_to_driver=log_to_driver,
                         logging_level=logging.WARNING, runtime_env=runtime_env,
                         logging_config=ray.LoggingConfig(log_level="WARNING"), **init_kwargs)
    quiet_driver(verbose)


@contextlib.contextmanager
def _driver_logging_kept() -> Iterator[None]:
    """The root and ``ray`` loggers of this process as they were before (the ``ray`` logger at
    WARNING). ``ray.LoggingConfig`` is meant for the job's workers; on the driver it would also
    set the root logger to its level and give it a second console handler, which silences
    Hydra's INFO log file and prints every warning twice under Hydra's own handler."""
    root, ray_logger = logging.getLogger(), logging.getLogger("ray")
    root_level, root_handlers = root.level, list(root.handlers)
    ray_handlers, ray_propagate = list(ray_logger.handlers), ray_logger.propagate
    try:
        yield
    finally:
        root.setLevel(root_level)
        root.handlers[:] = root_handlers
        ray_logger.handlers[:] = ray_handlers
        ray_logger.propagate = ray_propagate
        ray_logger.setLevel(logging.WARNING)


def quiet_driver(verbose: bool) -> None:
    """This process's Ray logs and Ray Data's progress output, quiet unless ``verbose``.

    Call it before building the Ray Datasets: each Dataset takes a copy of the DataContext.
    """
    from ray.data import DataContext

    logging.getLogger("ray").setLevel(ray_level(verbose))
    context = DataContext.get_current()
    # Ray's defaults (read from RAY_DATA_* variables at import); DataContext() would warn
    # about its own deprecated fields.
    defaults = {f.name: f.default for f in dataclasses.fields(DataContext)}
    for name, quiet_value in _QUIET_DATA.items():
        setattr(context, name, defaults[name] if verbose else quiet_value)
    callbacks = [c for c in context.custom_execution_callback_classes if c is not QuietRayData]
    if not verbose and ExecutionCallback is not None:
        callbacks.append(QuietRayData)
    context.custom_execution_callback_classes = callbacks
    quiet_data_console(verbose)


class _WarningsButNotBarsOff(logging.Filter):
    """Warnings and errors, except Ray Data's notice that quiet mode turned its bars off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not (
            record.levelno == logging.WARNING
            and str(record.msg).startswith(_BARS_OFF_NOTICE)
        )


def quiet_data_console(verbose: bool) -> None:
    """Ray Data's console handlers in this process: all of Ray's output with ``verbose``,
    else warnings and errors (its log file in the session folder keeps everything)."""
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "PlainRayHandler":  # its console; not SessionFileHandler
            continue
        for old in [f for f in handler.filters if isinstance(f, _WarningsButNotBarsOff)]:
            handler.removeFilter(old)
        if not verbose:
            handler.addFilter(_WarningsButNotBarsOff())


class QuietRayData(ExecutionCallback or object):  # type: ignore[misc]
    """Ray Data execution callback of quiet mode: makes each process that executes a Dataset
    quiet (:func:`quiet_data_console`). Ray Data creates it when it plans an execution, before
    any output of that execution, in that process; Ray may set up its handlers again later
    (e.g. for a new dataset), so it does it again when execution starts."""

    def __init__(self) -> None:
        quiet_data_console(False)

    def before_execution_starts(self, executor: Any) -> None:
        quiet_data_console(False)


def train_logging_config(verbose: bool) -> Any:
    """Ray Train's ``LoggingConfig`` for ``RunConfig(logging_config=...)``."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="INFO" if verbose else "WARNING")


def quiet_worker(verbose: bool) -> None:
    """In a Ray Train worker: Ray Train's per-report INFO line off unless ``verbose``.

    Ray Train 2.60 logs "Reporting training result N: TrainingReport(<all metrics>)" on every
    rank at every ``ray.train.report``, through ``logging.getLogger(__file__)`` of its
    execution context module: outside ``ray.train``, so its LoggingConfig does not reach it.
    """
    report_logger = train_context_logger()
    if report_logger is not None:  # None: another Ray layout, nothing to quiet
        report_logger.setLevel(logging.NOTSET if verbose else logging.WARNING)


def estimated_steps(images: int, batch_size: int, world_size: int) -> int:
    """Steps of one epoch on each worker, estimated from the shard set's image count.

    Only an estimate: Ray Data deals whole blocks to the workers (``streaming_split`` with
    ``equal=False``), so a worker's share may be a block more or less than ``images /
    world_size``; and the workers step together until the last one runs out.
    """
    per_worker = math.ceil(images / max(1, world_size))
    return max(1, math.ceil(per_worker / max(1, batch_size)))


def _tqdm_ray_bar(desc: str, total: int | None, unit: str) -> Any:
    """A ``ray.experimental.tqdm_ray.tqdm`` whose state goes out in one line on stdout.

    tqdm_ray sends a worker's bar state with ``print()``, which Ray Train 2.60 workers replace
    by one that writes each line to stdout *and* to a logger: the driver then got every state
    twice and drew a closed bar again. Returns None without tqdm_ray.
    """
    try:
        from ray.experimental import tqdm_ray
    except ImportError:
        return None

    class _OneLineBar(tqdm_ray.tqdm):
        def _dump_state(self, force_flush: bool = False) -> None:
            if not in_ray_worker():
                return super()._dump_state(force_flush)  # on the driver: drawn right here
            now = time.time()
            if not force_flush and now - self._last_flush_time < self._flush_interval_s:
                return None
            self._last_flush_time = now
            sys.stdout.write(json.dumps(self._get_state()) + "\n")
            sys.stdout.flush()
            return None

    return _OneLineBar(desc=desc, total=total, unit=unit)


class EpochBar:
    """One epoch's progress bar on the driver: steps done/total, loss, images/s, time left.

    Made by rank 0: ``ray.experimental.tqdm_ray`` sends the bar's state to the driver, which
    draws it with tqdm (a bar that does not fit the total just counts on). Without tqdm_ray
    (or without tqdm on the driver) there is no bar; the epoch line still comes.

        bar = EpochBar(epoch, epochs, total_steps, world_size)
        for batch in bar.wrap(batches): ...    # counts a step per batch
        bar.set_loss(value)                    # whenever a loss is known
        bar.close()
    """

    def __init__(self, epoch: int, epochs: int, total_steps: int | None, world_size: int,
                 enabled: bool = True):
        self.label = f"epoch {epoch + 1}/{epochs}"
        self.world_size = world_size
        self.loss: float | None = None
        self.images = 0
        self.start = time.perf_counter()
        self._bar = None
        if enabled:
            self._bar = _tqdm_ray_bar(self.label, total_steps, "step")

    def description(self) -> str:
        """``epoch 3/50 loss 12.345 ~41.2 img/s``: images/s of all workers, estimated as
        rank 0's rate times the number of workers."""
        parts = [self.label]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        elapsed = time.perf_counter() - self.start
        if self.images and elapsed > 0:
            parts.append(f"~{self.images * self.world_size / elapsed:.1f} img/s")
        return " ".join(parts)

    def wrap(self, batches: Iterable[Any]) -> Iterator[Any]:
        """``batches`` as they are; each one taken counts as a step begun."""
        for batch in batches:
            yield batch
            self.images += _batch_images(batch)
            if self._bar is not None:
                # tqdm_ray sends its state at most once a second: the count first, so that
                # it is never behind; the text then goes with the next update.
                self._bar.update(1)
                self._bar.set_description(self.description())

    def set_loss(self, loss: float) -> None:
        self.loss = float(loss)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_description(self.description())
            self._bar.close()  # sends the final state
            self._bar = None


def _batch_images(batch: Any) -> int:
    """Images in a ``(images, mask, targets)`` batch (0 if it is something else)."""
    try:
        return int(batch[0].shape[0])
    except (TypeError, IndexError, AttributeError):
        return 0
