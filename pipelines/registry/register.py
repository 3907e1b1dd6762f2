"""The run's model in MLflow: the best checkpoint logged as the run's model, registered as a
new version of ``tracking.registered_model`` and pointed at by ``tracking.alias``; and a model's
files fetched from the store a command was given.

A run logs its model once per best checkpoint: the run's tags remember which checkpoint is
logged (and as which model and version), so a re-run that trained nothing new logs nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from pipelines.common.checkpoints import CHECKPOINT_FILE
from pipelines.common.tracking import in_run, store_client
from pipelines.common.tracking_settings import TrackingSettings
from pipelines.registry.mlflow_model import log_detector_model
from pipelines.registry.model_facts import MODEL_CHECKPOINT
from pipelines.registry.model_uri import ModelUri, parse_model_uri

#: Run tag naming the checkpoint already logged as the run's MLflow model (no duplicate versions).
LOGGED_TAG = "samdetr.logged_checkpoint"


def log_best_model(tracking: TrackingSettings, uri: str, run_id: str, checkpoint_uri: str,
                   checkpoint: Any) -> dict[str, str]:
    """Log ``checkpoint`` (a Ray Train ``Checkpoint`` at ``checkpoint_uri``) as the model of
    MLflow run ``run_id`` in the store ``uri`` and register it there as configured.

    Returns ``model_uri`` and, when registered, ``registered_model`` (``"name vN @alias"``);
    empty when ``tracking.log_model`` is off.
    """
    if not tracking.log_model:
        return {}
    client = store_client(uri)
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
    """The pyfunc model of ``checkpoint`` logged into run ``run_id`` of the store ``uri``;
    MLflow's ``ModelInfo``. (``log_model`` knows only MLflow's process-wide URIs: they point at
    ``uri`` for the call, and back afterwards.)"""
    with tempfile.TemporaryDirectory(prefix="samdetr-") as folder, in_run(uri, run_id):
        checkpoint.to_directory(folder)  # a local copy, wherever the storage is
        return log_detector_model(os.path.join(folder, CHECKPOINT_FILE), name="model",
                                  registered_model_name=registered_model)


def model_location(client: Any, model_uri: str) -> str:
    """Where the files of ``model_uri`` are, looked up through ``client`` (and so in its
    store): ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``models:/<logged model id>`` and
    ``runs:/RUN_ID/NAME`` (a model the run logged) become the artifact location they name;
    other URIs (a path, ``s3://...``) stay as they are.

    MLflow's own download looks these up in the process's default store (the registry, and the
    logged models behind ``runs:/``) whatever URIs it is given; so the project resolves them."""
    parsed = parse_model_uri(model_uri)
    if parsed is None:
        return model_uri
    if parsed.kind == "run":
        return _run_model_location(client, model_uri, parsed)
    return _registered_location(client, model_uri)


def _registered_location(client: Any, model_uri: str, copies: int = 0) -> str:
    """The artifact location of a ``models:/`` URI (a registered version, or a logged model).
    A version copied from another (``copy_model_version``, as promotion does) has that one's
    files; a chain of copies is followed a few links deep."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    found = get_model_name_and_version(client, model_uri)
    if len(found) == 2:  # a registered version: its files are those of its source
        location = client.get_model_version_download_uri(*found)
        if parse_model_uri(location) is None:
            return location
        if copies >= 8:
            raise ValueError(f"{model_uri}: more than 8 copies deep, or a cycle of copies")
        return _registered_location(client, location, copies + 1)
    return client.get_logged_model(found[0]).artifact_location


def _run_model_location(client: Any, model_uri: str, parsed: ModelUri) -> str:
    """The artifact location of the model ``NAME`` that run ``RUN_ID`` logged
    (``runs:/RUN_ID/NAME``); the URI itself when the run logged none by that name (files
    logged as the run's own artifacts, which ``runs:/`` reads through the tracking URI)."""
    run_id, name = parsed.run_id, parsed.path
    if "/" in name:
        return model_uri
    experiment = client.get_run(run_id).info.experiment_id
    token = None
    while True:
        page = client.search_logged_models(experiment_ids=[experiment],
                                           filter_string=f"name = '{name}'", page_token=token)
        for model in page:
            if model.source_run_id == run_id:
                return model.artifact_location
        if not page.token:
            return model_uri
        token = page.token


def download_model(uri: str, model_uri: str, dst_path: str) -> str:
    """The files of the MLflow model ``model_uri`` of the store ``uri`` (tracking and
    registry) downloaded into ``dst_path``; returns the local model folder."""
    from mlflow.artifacts import download_artifacts

    location = model_location(store_client(uri), model_uri)
    return download_artifacts(artifact_uri=location, dst_path=dst_path, tracking_uri=uri,
                              registry_uri=uri)


@contextlib.contextmanager
def fetched_model(uri: str, model_uri: str) -> Iterator[str]:
    """A local copy of the MLflow model ``model_uri`` of the store ``uri`` while inside (a
    temporary folder, deleted afterwards)."""
    with tempfile.TemporaryDirectory(prefix="samdetr-model-") as folder:
        yield download_model(uri, model_uri, folder)


@contextlib.contextmanager
def fetched_checkpoint(uri: str, model_uri: str) -> Iterator[str]:
    """The samdetr checkpoint inside the MLflow model ``model_uri`` of the store ``uri``, as a
    local file while inside; ValueError for a model that holds none (not this project's)."""
    with fetched_model(uri, model_uri) as local:
        path = os.path.join(local, MODEL_CHECKPOINT)
        if not os.path.isfile(path):
            raise ValueError(f"{model_uri} holds no {MODEL_CHECKPOINT}: not a samdetr model")
        yield path
