"""COCO scoring of a checkpoint or a registered MLflow model on a shard set
(``python -m pipelines.evaluate`` is its command line, and its docstring the usage), and the
evaluation record an MLflow model's score leaves in the store."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from pipelines.common.checkpoints import local_checkpoint
from pipelines.common.checks import flag
from pipelines.common.tracking import quietly, store_client
from pipelines.common.tracking_settings import store_uri
from pipelines.inference.class_table import class_table
from pipelines.registry.evaluation_record import (
    EXPERIMENT,
    Scored,
    log_evaluation,
    logged_model_id,
    model_id_of,
    registered_version,
    tag_evaluation,
)
from pipelines.registry.register import fetched_model
from samdetr.data.shards import read_manifest
from samdetr.engine.class_metrics import check_threshold
from samdetr.engine.coco_eval import METRIC_NAMES, COCOEvaluator
from samdetr.engine.evaluation import eval_loader, ground_truth


@dataclass(frozen=True)
class EvaluateSettings:
    shards: str
    checkpoint: str | None = None
    model_uri: str | None = None
    batch_size: int | None = None  # None: the checkpoint's eval batch size (else 4)
    device: str = "auto"  # auto: cuda if available
    output: str | None = None  # write the metrics as JSON here
    # A model URI's score is recorded in MLflow: an evaluation run in `mlflow_experiment` and,
    # for a registered version, its evaluation.* tags (pipelines.registry.evaluation_record).
    record: bool = True
    # The store of model_uri and of the record; None: $MLFLOW_TRACKING_URI, else ./mlflow.db.
    tracking_uri: str | None = None
    mlflow_experiment: str = EXPERIMENT
    # Where the per-class table counts a box found, missed or confused: a detection scoring at
    # least this, overlapping a ground-truth box by at least this IoU.
    confusion_iou_threshold: float = 0.5
    confusion_score_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("confusion_iou_threshold", "confusion_score_threshold"):
            check_threshold(getattr(self, name), name)
        if (self.checkpoint is None) == (self.model_uri is None):
            raise ValueError("give exactly one of checkpoint=PATH or model_uri=URI")
        flag(self.record, "record")
        if not isinstance(self.shards, str) or not self.shards:
            raise ValueError("shards must be a shard-set folder or URI")
        if not isinstance(self.mlflow_experiment, str) or not self.mlflow_experiment.strip():
            raise ValueError("mlflow_experiment must name the MLflow experiment of the "
                             f"evaluation runs, got {self.mlflow_experiment!r}")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU if there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate_checkpoint(
    path: str, shards: str, batch_size: int | None = None, device: str = "auto"
) -> dict[str, float]:
    """COCO metrics of a training checkpoint on ``shards`` (:func:`score_checkpoint`)."""
    return score_checkpoint(path, shards, batch_size, device).summarize()


def evaluate_mlflow_model(
    model_dir: str, shards: str, batch_size: int | None = None, name: str | None = None
) -> dict[str, float]:
    """COCO metrics of the MLflow model in ``model_dir`` on ``shards``
    (:func:`score_mlflow_model`)."""
    return score_mlflow_model(model_dir, shards, batch_size, name).summarize()


def _scored(shards: str, detections: Iterable[dict[str, Any]]) -> COCOEvaluator:
    """The detections of every image of ``shards``, against its ground truth; an image without
    detections counts as one where the model found nothing."""
    evaluator = COCOEvaluator(ground_truth(shards), only_seen_images=False)
    evaluator.update(detections)
    return evaluator


def score_checkpoint(
    path: str, shards: str, batch_size: int | None = None, device: str = "auto"
) -> COCOEvaluator:
    """A training checkpoint's detections on ``shards``, ready for COCO's numbers, each class's
    and the confusion matrix.

    Image sizes and (unless given) the batch size come from the checkpoint, so the batches
    are those of the per-epoch evaluation in training and the metrics match the reported ones.
    """
    from samdetr.checkpoint import load_checkpoint
    from samdetr.engine.loop import predict

    with local_checkpoint(path) as local:
        model, _, extra = load_checkpoint(local)
    target = resolve_device(device)
    model.to(target)
    sizes = dict(extra.get("eval_transform") or {})
    batch_size = batch_size or int(extra.get("eval_batch_size", 4))
    loader = eval_loader(shards, batch_size=batch_size, **sizes)
    return _scored(shards, predict(model, loader, target))


def score_mlflow_model(
    model_dir: str, shards: str, batch_size: int | None = None, name: str | None = None
) -> COCOEvaluator:
    """The detections of an MLflow model (this project's pyfunc) in the local folder
    ``model_dir`` on ``shards``: the same numbers as :func:`score_checkpoint` of the
    checkpoint it was logged from (the model scores each image unpadded, as the evaluation
    batches do, and returns the boxes unclipped here). ``name``: the model in messages.

    A model of a store (``models:/...``, ``runs:/...``) is first fetched from the command's
    store (:func:`pipelines.registry.register.fetched_model`): MLflow would look it up in its
    default one.
    """
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd

    from samdetr.data.shards import iter_rows

    if not os.path.isdir(model_dir):
        raise ValueError(f"{model_dir!r} is not a local MLflow model folder: fetch a store's "
                         "model first (pipelines.registry.register.fetched_model)")
    model = mlflow.pyfunc.load_model(model_dir)
    params_schema = model.metadata.get_params_schema()
    params = {"clip_boxes": False}  # unclipped boxes, as the training-time evaluation scores
    if params_schema is None or "clip_boxes" not in {p.name for p in params_schema.params}:
        params = {}
        print(f"[evaluate] {name or model_dir} predates the clip_boxes param: its boxes come "
              "clipped to the image, which COCO scores slightly higher than the checkpoint's",
              flush=True)
    batch_size = batch_size or 4
    manifest = read_manifest(shards)
    rows = iter_rows(manifest, shard_dir=shards, columns=["image_id", "image", "exif_transpose"])
    detections: list[dict[str, Any]] = []

    def flush(chunk: list[dict[str, Any]]) -> None:
        for transposed in (False, True):  # rows whose stored orientation needs EXIF applied
            part = [r for r in chunk if bool(r["exif_transpose"]) == transposed]
            if not part:
                continue
            frame = pd.DataFrame({"image": [r["image"] for r in part]})
            table = model.predict(frame, params={"exif_transpose": transposed, **params})
            for i, row in enumerate(part):
                mine = table[table["image_index"] == i]
                detections.append({
                    "image_id": int(row["image_id"]),
                    "scores": mine["score"].to_numpy(np.float32),
                    "labels": mine["label"].to_numpy(np.int64),
                    "boxes": mine[["x1", "y1", "x2", "y2"]].to_numpy(np.float32).reshape(-1, 4),
                })

    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == batch_size:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    return _scored(shards, detections)


def run_evaluate(config: EvaluateSettings) -> dict[str, Any]:
    start = time.perf_counter()
    uri = None
    if config.checkpoint is not None:
        scores = score_checkpoint(config.checkpoint, config.shards, config.batch_size,
                                  config.device)
    else:
        uri = store_uri(config.tracking_uri)
        with fetched_model(uri, config.model_uri) as local:
            scores = score_mlflow_model(local, config.shards, config.batch_size,
                                        config.model_uri)
    metrics = scores.summarize()
    classes = scores.per_class()
    matrix = scores.confusion_matrix(iou_threshold=config.confusion_iou_threshold,
                                     score_threshold=config.confusion_score_threshold)
    seconds = time.perf_counter() - start
    images = int(read_manifest(config.shards)["num_rows"])
    out = {
        "source": config.checkpoint or config.model_uri,
        "shards": config.shards,
        "metrics": metrics,
        "seconds": round(seconds, 2),
        # The whole evaluation: loading the model, decoding, inference and COCO scoring.
        "images": images,
        "images_per_s": round(images / seconds, 2),
        # Each class: AP, AP50 and the precision-recall curve at IoU 0.5 (samdetr.engine.
        # class_metrics.RECALL_POINTS), and the confusion matrix at the stated thresholds.
        "per_class": [{**c.as_row(), **counts, "precision50": list(c.precision50)}
                      for c, counts in zip(classes, matrix.class_counts(), strict=True)],
        "confusions": matrix.confusions(),
        "confusion_matrix": matrix.as_dict(),
    }
    if config.model_uri is not None and config.record:
        out["evaluation_run"] = quietly("record the evaluation in MLflow", record_evaluation,
                                        config, uri, metrics, prefix="evaluate")
    if config.output:
        with open(config.output, "w") as f:
            json.dump(out, f, indent=2)
    return out


def record_evaluation(config: EvaluateSettings, uri: str, metrics: dict[str, float]) -> str:
    """The MLflow evaluation run of ``config.model_uri`` in the store ``uri`` (and the
    version's tags); its id."""
    from samdetr.data.shards import manifest_checksum

    client = store_client(uri)
    version = registered_version(client, config.model_uri)
    model_id = model_id_of(version) if version is not None else None
    if version is None:
        model_id = logged_model_id(config.model_uri)  # a logged model's own URI
    scored = Scored(config.model_uri, metrics, config.shards, manifest_checksum(config.shards),
                    version.name if version else None,
                    str(version.version) if version else None, model_id)
    run_id = log_evaluation(uri, config.mlflow_experiment, scored, "evaluate")
    tag_evaluation(client, scored, run_id)
    return run_id


def format_metrics(result: dict[str, Any]) -> str:
    lines = [f"{result['source']} on {result['shards']}: {result['images']} images in "
             f"{result['seconds']}s ({result['images_per_s']} images/s)"]
    lines += [f"  {name:<6} {result['metrics'][name]:.4f}" for name in METRIC_NAMES]
    if result.get("per_class"):
        lines += class_table(result["per_class"], result["confusion_matrix"],
                             result["confusions"])
    if result.get("evaluation_run"):
        lines.append(f"  recorded as MLflow run {result['evaluation_run']}")
    return "\n".join(lines)
