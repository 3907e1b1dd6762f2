"""The record of a model's evaluation in MLflow: one run per scored model, and tags on the
registered version it scored.

The run (in its own experiment: the setting ``mlflow_experiment`` of evaluate and promote,
``samdetr-evaluation`` by default) holds the COCO metrics, the
shard set as an MLflow dataset input (its source, and the manifest's SHA-256 as the digest and
as an input tag), a link to the logged model it scored, and tags naming the model version and
why it was scored (``samdetr.purpose``: ``evaluate`` or ``promotion``). The version gets
``evaluation.*`` tags: the metrics, the shard set's checksum, the run and the time, so the
registry alone shows the latest evaluation of every version.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.common.tracking import experiment_id, store_client
from pipelines.registry.model_uri import parse_model_uri

EVAL_TAG = "evaluation."
#: The MLflow experiment of the evaluation runs unless ``mlflow_experiment=`` says otherwise.
EXPERIMENT = "samdetr-evaluation"


@dataclass(frozen=True)
class Scored:
    """One model scored on one shard set. ``name`` / ``version``: the registered version
    (``None`` for a ``runs:/`` or logged-model URI); ``model_id``: MLflow's logged model id."""
    model_uri: str
    metrics: dict[str, float]
    shards: str
    shards_sha256: str
    name: str | None = None
    version: str | None = None
    model_id: str | None = None

    def label(self) -> str:
        return f"{self.name} v{self.version}" if self.version else self.model_uri


def registered_version(client: Any, model_uri: str) -> Any | None:
    """MLflow's ``ModelVersion`` that ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``
    names; ``None`` for other URIs (``runs:/...``, ``models:/<logged model id>``)."""
    parsed = parse_model_uri(model_uri)
    if parsed is None or not parsed.registered:
        return None
    if parsed.kind == "alias":
        return client.get_model_version_by_alias(parsed.name, parsed.alias)
    return client.get_model_version(parsed.name, parsed.version)


def model_id_of(version: Any) -> str | None:
    """The logged model's id behind a registered version (MLflow 3 leaves
    ``ModelVersion.model_id`` empty for versions registered at log time; their ``source`` is
    ``models:/<model id>``)."""
    if getattr(version, "model_id", None):
        return version.model_id
    return logged_model_id(getattr(version, "source", "") or "")


def logged_model_id(uri: str) -> str | None:
    """The id of ``models:/<logged model id>``; None for every other URI or path."""
    try:
        parsed = parse_model_uri(uri)
    except ValueError:  # not a URI this project reads: no id
        return None
    return parsed.model_id if parsed is not None and parsed.kind == "logged" else None


def shards_dataset(shards: str, sha256: str) -> Any:
    """The shard set as an MLflow dataset (metadata only: source and digest)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow warns while it probes every source type
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(shards)
    name = os.path.basename(shards.rstrip("/")) or shards
    # MLflow caps a digest at 36 characters; the whole checksum goes into an input tag.
    return MetaDataset(source, name=name, digest=sha256[:32])


def log_evaluation(uri: str, experiment: str, scored: Scored, purpose: str,
                   extra_tags: dict[str, str] | None = None) -> str:
    """A finished MLflow run recording ``scored``; returns its id."""
    from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, Metric, Param

    client = store_client(uri)
    when = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    subject = f"{scored.name}-v{scored.version}" if scored.version else "model"
    tags = {
        "samdetr.purpose": purpose,
        "samdetr.model_uri": scored.model_uri,
        "samdetr.eval_manifest_sha256": scored.shards_sha256,
        **({"samdetr.model_name": scored.name, "samdetr.model_version": scored.version}
           if scored.version else {}),
        **(extra_tags or {}),
    }
    run = client.create_run(experiment_id(client, experiment), run_name=f"eval-{subject}-{when}",
                            tags=tags)
    run_id = run.info.run_id
    stamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), stamp, 0) for k, v in scored.metrics.items()],
        params=[Param("model_uri", scored.model_uri), Param("shards", scored.shards)],
    )
    dataset = shards_dataset(scored.shards, scored.shards_sha256)
    inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[
        InputTag("mlflow.data.context", "evaluation"),
        InputTag("samdetr.manifest_sha256", scored.shards_sha256),
    ])]
    models = [LoggedModelInput(scored.model_id)] if scored.model_id else None
    client.log_inputs(run_id, datasets=inputs, models=models)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def tag_evaluation(client: Any, scored: Scored, run_id: str | None) -> None:
    """The version's ``evaluation.*`` tags: the latest evaluation's metrics, data and run."""
    if not scored.version:
        return
    tags = {f"{EVAL_TAG}{k}": f"{v:.6g}" for k, v in scored.metrics.items()}
    tags.update({
        EVAL_TAG + "manifest_sha256": scored.shards_sha256,
        EVAL_TAG + "shards": scored.shards,
        EVAL_TAG + "run_id": run_id or "",
        EVAL_TAG + "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    for key, value in tags.items():
        client.set_model_version_tag(scored.name, scored.version, key, value)


def refuse_experiment_override(argv: Sequence[str], command: str) -> None:
    """ValueError for an ``experiment=...`` argument of ``pipelines.<command>``: Hydra would
    read it as the training recipe group of train and tune (and fail to compose, or merge a
    recipe), while the MLflow experiment of the evaluation runs is ``mlflow_experiment=``."""
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        if "=" in arg and (key == "experiment" or key.startswith("experiment.")):
            raise ValueError(
                f"{arg!r}: pipelines.{command} has no training recipe to choose (experiment= "
                "picks one in pipelines.train and pipelines.tune); the MLflow experiment of its "
                f"evaluation runs is mlflow_experiment=NAME (default {EXPERIMENT})"
            )
