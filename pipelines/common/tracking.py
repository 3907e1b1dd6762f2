"""MLflow tracking on the driver: a reachability check, the MLflow run of a training run (new,
reopened, finished), a study's or sweep's parent run, and the one place that changes MLflow's
process-wide state (:func:`using_store`, :func:`in_run`).

Everything else goes through ``MlflowClient`` with explicit run ids and URIs (no global "active
run", no global tracking URI), so a command uses the store it was given for every call
(:func:`pipelines.common.tracking_settings.store_uri`, :func:`store_client`). Tracking never ends
a training run: the driver's last calls warn on failure, and rank 0 logs through
:class:`pipelines.common.run_logger.RunLogger`, which keeps what the store refused and sends it
again later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

RUN_NAME_TAG = "samdetr.run_name"
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
