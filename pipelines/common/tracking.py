"""MLflow tracking of training runs: a reachability check, the MLflow run of a training run, and
the logger rank 0 uses inside the Ray Train worker.

Everything goes through ``MlflowClient`` with explicit run ids and URIs (no global "active run",
no global tracking URI), so the same code works on the driver and in a worker, against SQLite or
a tracking server, and a command uses the store it was given for every call
(:func:`store_uri`, :func:`store_client`; :func:`using_store` for the few MLflow functions that
only know the process-wide URI). Tracking never ends a training run: the worker's
:class:`RunLogger` sends from a background thread, keeps what the store refused and sends it
again later, and says so on the console; the driver's last calls warn on failure.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

RUN_NAME_TAG = "samdetr.run_name"
#: The logger of urllib3's per-request retry warnings ("Retrying (...) after connection broken
#: by ..."), which MLflow's HTTP client triggers for every request to a server that is down.
RETRY_LOGGER = "urllib3.connectionpool"
#: What ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also write (for subprocesses).
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def store_client(uri: str) -> Any:
    """An ``MlflowClient`` whose tracking and registry are both the store ``uri`` (MLflow would
    otherwise take the registry from $MLFLOW_REGISTRY_URI or ``mlflow.set_registry_uri``)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def using_store(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs set to ``uri`` inside, for the MLflow
    functions that take no URI (``mlflow.start_run``, ``mlflow.pyfunc.log_model``,
    ``mlflow.register_model``); afterwards exactly what was set before, environment included
    (``mlflow.set_tracking_uri`` also writes $MLFLOW_TRACKING_URI, and ``None`` deletes it).

    Process-wide while inside: for a command's own thread, not for code running beside it."""
    import mlflow

    saved = {name: os.environ.get(name) for name in URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def in_run(uri: str, run_id: str) -> Iterator[Any]:
    """Run ``run_id`` of the store ``uri`` as MLflow's active run inside (for
    ``mlflow.pyfunc.log_model``, which logs into the active run only), on :func:`using_store`.
    Leaving ends it as MLflow's own ``start_run`` block does (FINISHED; FAILED on an error)."""
    import mlflow

    with using_store(uri), mlflow.start_run(run_id=run_id) as run:
        yield run


def quietly(what: str, fn: Callable[..., Any], *args: Any, prefix: str = "samdetr",
            warnings: list[str] | None = None) -> Any:
    """``fn(*args)``, with a failure turned into a printed warning (appended to ``warnings``)
    and ``None``: tracking never ends a training run, a study or a sweep."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - MLflow raises many kinds
        message = f"could not {what} ({type(err).__name__}: {str(err)[:300]})"
        if warnings is not None:
            warnings.append(message)
        print(f"[{prefix}] warning: {message}", flush=True)
        return None


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's INFO lines and download bars off inside (a sweep logging one model per trial,
    a promotion downloading two: each would bury the results under bars of 47 small files)."""
    logger = logging.getLogger("mlflow")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail now, with a clear message, if the tracking store cannot be used.

    HTTP(S) servers must answer ``/health``; other stores (SQLite, databricks, ...) must answer
    a search through ``MlflowClient``. Raises ``ConnectionError``.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                if response.status != 200:
                    raise ConnectionError(f"{url} answered HTTP {response.status}")
        except (urllib.error.URLError, OSError, ConnectionError) as err:
            raise ConnectionError(
                f"MLflow tracking server {uri} is unreachable ({err}). Start it, fix "
                "tracking.tracking_uri / MLFLOW_TRACKING_URI, or run with tracking.enabled=false."
            ) from err
    try:
        store_client(uri).search_experiments(max_results=1)
    except Exception as err:  # MLflow raises MlflowException, sqlalchemy errors, ...
        raise ConnectionError(f"MLflow tracking store {uri} cannot be used: {err}") from err


def create_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, str],
    config_yaml: str,
    artifact_location: str | None = None,
    parent_run_id: str | None = None,
) -> str:
    """A new MLflow run in ``experiment`` (created if needed) with the params and the resolved
    config (``config.yaml``), nested under ``parent_run_id`` if given; returns its id."""
    from mlflow.entities import Param

    client = store_client(uri)
    tags = {RUN_NAME_TAG: run_name}
    if parent_run_id:  # the tag MLflow's UI and search use to nest runs
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(client, experiment, artifact_location),
                            run_name=run_name, tags=tags)
    run_id = run.info.run_id
    items = [Param(k, v) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])
    client.log_text(run_id, config_yaml, "config.yaml")
    return run_id


def experiment_id(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if needed (runs starting at once may race)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as err:
        found = client.get_experiment_by_name(name)  # another run created it meanwhile
        if found is None:
            raise err
        return found.experiment_id


def reopen_run(uri: str, run_id: str, run_name: str) -> None:
    """Set the stored MLflow run of a resumed training run back to RUNNING.

    ValueError when the store does not hold it (the run's record names another store).
    """
    from mlflow.entities import RunStatus
    from mlflow.exceptions import MlflowException

    client = store_client(uri)
    try:
        client.get_run(run_id)
    except MlflowException as err:
        raise ValueError(
            f"run {run_name!r} logs to MLflow run {run_id}, which the tracking store {uri} does "
            f"not hold ({err.error_code}). Point tracking.tracking_uri at the store that has it, "
            "or start a new training run (another trainer.run_name or trainer.storage_path)."
        ) from err
    client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))


def finish_run(uri: str, run_id: str, ok: bool) -> None:
    store_client(uri).set_terminated(run_id, "FINISHED" if ok else "FAILED")


def open_parent_run(tracking: Any, name: str, params: dict[str, str], text: str,
                    run_id: str | None, prefix: str) -> tuple[str | None, str | None]:
    """``(uri, run_id)`` of the parent run of a study or sweep (``tracking``: its
    ``TrackingSettings``): ``run_id`` reopened when resuming, else a new run with ``params`` and
    ``text`` (the command or config) as ``config.yaml``. ``(None, None)`` with tracking off;
    a store that fails here is a warning and gives ``(uri, None)`` (nothing is tracked)."""
    if not tracking.enabled:
        return None, None
    uri = tracking.resolved_uri()
    if run_id:
        quietly(f"reopen the MLflow run of {name}", reopen_run, uri, run_id, name, prefix=prefix)
    else:
        run_id = quietly(f"create the MLflow run of {name}", create_run, uri, tracking.experiment,
                         name, params, text, tracking.artifact_location, prefix=prefix)
    if run_id:
        print(f"[{prefix}] MLflow parent run {run_id} at {uri}", flush=True)
    return uri, run_id


def duration(seconds: float) -> str:
    """``42s``, ``4m 02s``, ``1h 05m``: how long an outage lasted, for the console."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


class _RetryWarnings(logging.Filter):
    """Keeps urllib3's "Retrying ..." warnings of one thread (a :class:`RunLogger`'s sender) off
    the console and hands each to ``on_retry`` (the logger's own outage message covers them);
    every other thread's warnings pass."""

    def __init__(self, thread_id: int | None, on_retry: Callable[[str], None]):
        super().__init__()
        self.thread_id = thread_id
        self.on_retry = on_retry

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread_id or not str(record.msg).startswith("Retrying"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        self.on_retry(type(args[1]).__name__ if len(args) > 1 else "no answer")
        return False


class RunLogger:
    """Rank 0's handle on the MLflow run: metrics in batches, pictures, plots.

    Calls return at once; a background thread sends, in order. When the store stops answering
    (a call fails, or MLflow's HTTP client starts retrying one), ``warn`` says so once per
    outage, with the URI and the retry interval; the calls made meanwhile are queued (at most
    ``max_pending``; beyond that they are dropped) and sent again every ``retry_after_s``
    seconds; once the queue is sent, ``warn`` says how many calls went late and after how long.
    urllib3's per-request "Retrying" warnings of the sending thread stay off the console while
    the logger exists (other threads' still show). :meth:`counts` gives the totals for the run's
    summary.
    """

    def __init__(self, uri: str, run_id: str, retry_after_s: float = 30.0,
                 max_pending: int = 10_000, warn: Callable[[str], None] = print):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.retry_after_s = retry_after_s
        self.max_pending = max_pending
        self.failures = 0  # failed calls to the store
        self.dropped = 0  # calls never sent: refused by a full queue, or unsent at close
        self.queued = 0  # calls held back by an outage
        self.sent_late = 0  # ... and sent once the store answered again
        self.outages = 0
        self._outage_s = 0.0  # the length of the outages that ended
        self._warn = warn
        self._pending: collections.deque = collections.deque()  # (number, item)
        self._cond = threading.Condition()
        self._number = 0  # of the last call queued
        self._held_until = 0  # calls numbered up to this were held back by an outage
        self._down_since: float | None = None  # the current outage's start (None: no outage)
        self._held_now = 0  # calls held back by the current outage
        self._failing = False  # the last try failed
        self._deadline: float | None = None  # set by close(): give up retrying after it
        self._thread = threading.Thread(target=self._work, name="samdetr-mlflow", daemon=True)
        self._thread.start()
        self._retries = _RetryWarnings(self._thread.ident, self._outage)
        logging.getLogger(RETRY_LOGGER).addFilter(self._retries)

    def last_step(self, key: str) -> int | None:
        """The largest step logged for metric ``key``: -1 when none is, None when the store
        cannot tell (it failed)."""
        try:
            steps = [m.step for m in self.client.get_metric_history(self.run_id, key)]
        except Exception as err:  # noqa: BLE001 - tracking must not stop training
            self._note_failure(err)
            return None
        return max(steps, default=-1)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self._put(("metrics", {k: float(v) for k, v in values.items()}, int(step),
                   int(time.time() * 1000)))

    def log_image(self, image: Any, artifact_file: str) -> None:
        """A PIL image as an artifact (format from the file name, e.g. ``.png``)."""
        self._put(("image", image.copy(), artifact_file))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as an image artifact (drawn here, sent in the background)."""
        from PIL import Image

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        buffer.seek(0)
        self.log_image(Image.open(buffer), artifact_file)

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued is sent; returns at once while the store fails."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while self._pending and not self._failing:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return not self._pending

    def close(self, timeout_s: float) -> None:
        """Send what is queued (trying for at most ``timeout_s``), then stop the thread; what
        is still unsent is lost (counted, and said)."""
        with self._cond:
            self._deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._thread.join(timeout_s + 1.0)
        logging.getLogger(RETRY_LOGGER).removeFilter(self._retries)
        with self._cond:
            left = len(self._pending)
            self._pending.clear()
            self.dropped += left
            if self._down_since is not None:
                self._outage_s += time.monotonic() - self._down_since
                self._down_since = None
        if left:
            self._warn(f"warning: {left} MLflow logging call(s) could not be sent to {self.uri} "
                       "and are lost")

    def counts(self) -> dict[str, Any]:
        """The logger's totals: ``outages``, ``outage_s`` (their length), ``queued`` (calls
        held back by them), ``sent_late``, ``lost`` (never sent) and ``failures`` (failed
        calls to the store)."""
        with self._cond:
            ongoing = 0.0 if self._down_since is None else time.monotonic() - self._down_since
            return {"outages": self.outages, "outage_s": round(self._outage_s + ongoing, 1),
                    "queued": self.queued, "sent_late": self.sent_late, "lost": self.dropped,
                    "failures": self.failures}

    def _put(self, item: tuple) -> None:
        with self._cond:
            self._number += 1
            held = self._failing
            if held:
                self.queued += 1
                self._held_now += 1
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending.append((self._number, item))
            if held:
                self._held_until = self._number
            self._cond.notify_all()

    def _send(self, item: tuple) -> None:
        from mlflow.entities import Metric

        if item[0] == "metrics":
            _, values, step, stamp = item
            metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
            self.client.log_batch(self.run_id, metrics=metrics)
        else:
            _, image, artifact_file = item
            self.client.log_image(self.run_id, image, artifact_file)

    def _note_failure(self, err: BaseException) -> None:
        with self._cond:
            self.failures += 1
        self._outage(type(err).__name__)

    def _outage(self, reason: str) -> None:
        """The store does not answer: hold back what is queued; say so if the outage is new."""
        with self._cond:
            self._failing = True
            new = self._down_since is None
            if new:
                self.outages += 1
                self._down_since = time.monotonic()
                self._held_now = 0
            unheld = [number for number, _ in self._pending if number > self._held_until]
            self.queued += len(unheld)
            self._held_now += len(unheld)
            self._held_until = max([self._held_until, *unheld])
            self._cond.notify_all()
        if new:
            self._warn(f"MLflow tracking server {self.uri} is unreachable ({reason}): training "
                       "goes on; its metrics and pictures are queued and sent again every "
                       f"{self.retry_after_s:g}s until it answers")

    def _sent(self, number: int) -> None:
        """Call ``number`` reached the store; say so once the calls held back are all sent."""
        with self._cond:
            if self._pending and self._pending[0][0] == number:
                self._pending.popleft()
            if number <= self._held_until:
                self.sent_late += 1
            self._failing = False
            flushed = self._down_since is not None and number >= self._held_until
            if flushed:
                seconds = time.monotonic() - self._down_since
                self._outage_s += seconds
                self._down_since = None
                held = self._held_now
            self._cond.notify_all()
        if flushed:
            self._warn(self._back(held, seconds))

    def _back(self, held: int, seconds: float) -> str:
        """The console line of an outage's end."""
        if not held:
            return (f"MLflow tracking server {self.uri} answers again after "
                    f"{duration(seconds)} (nothing was queued meanwhile)")
        return (f"MLflow tracking server {self.uri} answers again: sent the {held} logging "
                f"call(s) queued during the {duration(seconds)} outage")

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and self._deadline is None:
                    self._cond.wait()
                if not self._pending:
                    return
                number, item = self._pending[0]
            try:
                self._send(item)
            except Exception as err:  # noqa: BLE001 - tracking must not stop training
                self._note_failure(err)
                with self._cond:
                    if self._deadline is not None and time.monotonic() >= self._deadline:
                        return
                    wait = self.retry_after_s
                    if self._deadline is not None:
                        wait = min(wait, max(0.0, self._deadline - time.monotonic()))
                    self._cond.wait(wait)
                continue
            self._sent(number)
