"""MLflow tracking of training runs: a reachability check, one MLflow run per Ray Train run
name (so a resumed run keeps logging into the same MLflow run), and a small logger that rank 0
uses inside the Ray Train worker.

Everything goes through ``MlflowClient`` with explicit run ids (no global "active run"), so the
same code works on the driver and in a worker, against SQLite or a tracking server.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from typing import Any

RUN_NAME_TAG = "samdetr.run_name"


def absolute_uri(uri: str) -> str:
    """Make a relative SQLite path absolute: Ray workers run in other folders than the driver.

    ``sqlite:///mlflow.db`` -> ``sqlite:////abs/cwd/mlflow.db``; other URIs are unchanged.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail now, with a clear message, if the tracking store cannot be used.

    HTTP(S) servers must answer ``/health``; other stores (SQLite, databricks, ...) must answer
    a search through ``MlflowClient``. Raises ``ConnectionError``.
    """
    from mlflow.tracking import MlflowClient

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
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # MLflow raises MlflowException, sqlalchemy errors, ...
        raise ConnectionError(f"MLflow tracking store {uri} cannot be used: {err}") from err


def start_or_resume_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: dict[str, str],
    config_yaml: str,
    artifact_location: str | None = None,
) -> tuple[str, bool]:
    """The MLflow run of Ray Train run ``run_name`` in ``experiment``: ``(run_id, resumed)``.

    A new run gets the params and the resolved config (``config.yaml``); an existing one (tag
    :data:`RUN_NAME_TAG`) is set back to RUNNING and keeps its history.
    """
    from mlflow.entities import Param, RunStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        if artifact_location and "://" not in artifact_location:
            artifact_location = os.path.abspath(artifact_location)
        experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
    else:
        experiment_id = found.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id, True
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name})
    run_id = run.info.run_id
    items = [Param(k, v) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])
    client.log_text(run_id, config_yaml, "config.yaml")
    return run_id, False


def finish_run(uri: str, run_id: str, ok: bool) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).set_terminated(run_id, "FINISHED" if ok else "FAILED")


class RunLogger:
    """Rank 0's handle on the MLflow run (metrics in batches, pictures, plots)."""

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        self.run_id = run_id

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, image: Any, artifact_file: str) -> None:
        """A PIL image as an artifact (format from the file name, e.g. ``.png``)."""
        self.client.log_image(self.run_id, image, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as an artifact."""
        self.client.log_figure(self.run_id, figure, artifact_file)
