"""The run's model in MLflow: the best checkpoint logged as the run's model, registered as a
new version of ``tracking.registered_model`` and pointed at by ``tracking.alias``.

A run logs its model once per best checkpoint: the run's tags remember which checkpoint is
logged (and as which model and version), so a re-run that trained nothing new logs nothing.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from pipelines.train_settings import CHECKPOINT_FILE, TrackingSettings

#: Run tag naming the checkpoint already logged as the run's MLflow model (no duplicate versions).
LOGGED_TAG = "samdetr.logged_checkpoint"


def log_best_model(tracking: TrackingSettings, uri: str, run_id: str, checkpoint_uri: str,
                   checkpoint: Any) -> dict[str, str]:
    """Log ``checkpoint`` (a Ray Train ``Checkpoint`` at ``checkpoint_uri``) as the model of
    MLflow run ``run_id`` and register it as configured.

    Returns ``model_uri`` and, when registered, ``registered_model`` (``"name vN @alias"``);
    empty when ``tracking.log_model`` is off.
    """
    if not tracking.log_model:
        return {}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    if tags.get(LOGGED_TAG) == checkpoint_uri:  # a re-run that trained nothing new
        kept = {"model_uri": tags.get(LOGGED_TAG + ".uri"),
                "registered_model": tags.get(LOGGED_TAG + ".version")}
        return {k: v for k, v in kept.items() if v}
    info = _log(uri, run_id, checkpoint, tracking.registered_model)
    out = {"model_uri": info.model_uri}
    if tracking.registered_model:
        version = info.registered_model_version
        out["registered_model"] = f"{tracking.registered_model} v{version}"
        if tracking.alias:
            client.set_registered_model_alias(tracking.registered_model, tracking.alias, version)
            out["registered_model"] += f" @{tracking.alias}"
    client.set_tag(run_id, LOGGED_TAG, checkpoint_uri)
    client.set_tag(run_id, LOGGED_TAG + ".uri", out["model_uri"])
    client.set_tag(run_id, LOGGED_TAG + ".version", out.get("registered_model", ""))
    return out


def _log(uri: str, run_id: str, checkpoint: Any, registered_model: str | None) -> Any:
    """The pyfunc model of ``checkpoint`` logged into run ``run_id``; MLflow's ``ModelInfo``."""
    import mlflow

    from pipelines.mlflow_model import log_detector_model

    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory(prefix="samdetr-") as folder, \
            mlflow.start_run(run_id=run_id):
        checkpoint.to_directory(folder)  # a local copy, wherever the storage is
        return log_detector_model(os.path.join(folder, CHECKPOINT_FILE), name="model",
                                  registered_model_name=registered_model)
