"""One training run from its settings (``python -m pipelines.train`` is its command line, and its
docstring the usage): the data and preflight checks, the run's record and MLflow run (new or
resumed), Ray Train's fit, the best model logged, and the summary printed at the end."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.common.checkpoints import checkpoint_uri
from pipelines.common.console import connect
from pipelines.common.run_logger import duration
from pipelines.common.tracking import (
    check_reachable,
    create_run,
    finish_run,
    quietly,
    reopen_run,
    store_client,
)
from pipelines.data.ingest import EpochClock
from pipelines.registry.register import log_best_model
from pipelines.training.backbone_weights import (
    check_backbone_weights,
    share_object,
)
from pipelines.training.job import TrainJob
from pipelines.training.preflight import check_cluster
from pipelines.training.pretrained import check_start, fetch_pretrained, log_start
from pipelines.training.run_record import (
    RunRecord,
    config_differences,
    new_record,
    read_record,
    refuse_changes,
    write_record,
)
from pipelines.training.settings import TrainSettings, flatten
from pipelines.training.trainer import build_trainer
from samdetr.engine.evaluation import manifest_summary
from samdetr.pretrained import PretrainedWeights


def check_data(settings: TrainSettings) -> dict[str, Any]:
    """Both shard sets exist and the model has a logit for every category id."""
    train = manifest_summary(settings.data.train_shards)
    val = manifest_summary(settings.data.val_shards)
    classes = settings.detector.model.num_classes
    for split, summary in (("train", train), ("val", val)):
        if summary["images"] == 0:
            raise ValueError(f"data.{split}_shards holds no images")
        if summary["num_classes"] > classes:
            raise ValueError(
                f"data.{split}_shards has category ids up to {summary['num_classes'] - 1}, "
                f"but model.num_classes = {classes}; set model.num_classes="
                f"{summary['num_classes']} (K = largest category id + 1)"
            )
    check_same_source(train, val)
    if train["images"] < settings.trainer.num_workers:
        raise ValueError(
            f"{train['images']} training images cannot feed {settings.trainer.num_workers} workers"
        )
    return {"train": train, "val": val}


def check_same_source(train: dict[str, Any], val: dict[str, Any]) -> None:
    """The two shard sets (:func:`samdetr.engine.evaluation.manifest_summary`) label the same
    classes with the same ids, and when preprocessing carved both from one split, they are its
    two parts under the same fraction and seed (other settings would make them overlap)."""
    if train["categories"] != val["categories"]:
        def show(categories: list[dict[str, Any]]) -> str:
            return ", ".join(f"{c['id']}:{c['name']}" for c in categories[:8]) + (
                ", ..." if len(categories) > 8 else "")
        raise ValueError(
            f"data.train_shards and data.val_shards label different classes (train: "
            f"{show(train['categories'])}; val: {show(val['categories'])}): make both with the "
            "same class settings (data.classes, data.keep_classes, data.rename_classes)")
    splits = [(s.get("selection") or {}).get("split") for s in (train, val)]
    if all(splits):
        carved, held = ({k: v for k, v in split.items() if k != "part"} for split in splits)
        if carved != held or [split["part"] for split in splits] != ["train", "val"]:
            raise ValueError(
                f"data.train_shards and data.val_shards were carved from one split with other "
                f"settings (train: {splits[0]}; val: {splits[1]}), so they may share images: "
                "preprocess both with the same data.val_fraction and data.split_seed, "
                "split=train for one and split=val for the other")


def run_training(settings: TrainSettings, config_yaml: str = "",
                 callbacks: Sequence[Any] = (),
                 backbone_state: dict[str, Any] | None = None,
                 pretrained: PretrainedWeights | None = None) -> dict[str, Any]:
    """Train (or resume) the run; returns a summary with the best checkpoint and metrics.

    Local paths in ``settings`` are made absolute here, once, against the current folder.
    ``callbacks``: Ray Train callbacks of the run (a Tune trial passes ``TuneReportCallback``).
    ``backbone_state``: the ImageNet weights of ``model.backbone.weights``, already read (a
    sweep's driver reads them once for all its trials); None: read here, for a fresh run.
    ``pretrained``: the same for ``init.weights`` (the detector it fine-tunes from).
    The workers load them from Ray's object store, never from disk or network themselves.
    """
    settings = settings.resolved()
    previous = previous_record(settings)
    data = check_data(settings)
    if previous is None:  # a resumed run's checkpoint has all its weights
        if settings.init.weights is not None:
            pretrained = pretrained or fetch_pretrained(settings.init.weights,
                                                        settings.tracking.resolved_uri())
        elif backbone_state is None:
            backbone_state = check_backbone_weights(settings.detector.model.backbone.weights)
    else:
        pretrained = None
    start = check_start(settings, pretrained)
    for line in start.get("lines", ()):
        _say(f"init.weights={settings.init.weights}: {line}")
    if settings.tracking.enabled:  # before any minute is spent on training
        check_reachable(settings.tracking.resolved_uri())
    _connect(settings.trainer.ray_address, settings.trainer.verbose)
    check_cluster(settings)
    run_id, uri = open_tracking(settings, previous, config_yaml)
    store_record(settings, previous, run_id, uri)
    warnings: list[str] = []
    if run_id is not None and start:
        quietly("log what the run starts from", log_start, uri, run_id, start,
                warnings=warnings)
    try:
        summary = _fit(settings, data, run_id, uri, callbacks, StartWeights(
            share_object(backbone_state), share_object(pretrained),
            start.get("lineage", {})))
    except BaseException:
        if run_id is not None:  # whatever stopped the run, MLflow must not show it running
            quietly("mark the MLflow run FAILED", finish_run, uri, run_id, False,
                        warnings=warnings)
        raise
    if run_id is not None:
        logged = quietly("log the model", log_best_model, settings.tracking, uri, run_id,
                         summary["best_checkpoint"], summary["best"], warnings=warnings)
        summary.update(logged or {})
        quietly("mark the MLflow run FINISHED", finish_run, uri, run_id, True, warnings=warnings)
        summary["mlflow_run_id"] = run_id
        summary["tracking_uri"] = uri
    summary["tracking_failures"] += len(warnings)
    return summary


def _connect(address: str | None, verbose: bool = False) -> None:
    """Ray (started here unless it is up), with the workers' lines shown on this console and
    Ray's own INFO logs and progress output only if ``verbose``
    (:mod:`pipelines.common.console`)."""
    connect(address, verbose=verbose, log_to_driver=True)


def previous_record(settings: TrainSettings) -> RunRecord | None:
    """The stored record of this run, if it is being resumed; refuses a changed config."""
    previous = read_record(settings.trainer.storage_path, settings.trainer.run_name)
    if previous is not None:
        differences = config_differences(previous.settings, settings.to_dict())
        if differences and not settings.trainer.allow_config_change:
            refuse_changes(settings.trainer.run_name, differences)
        if differences:
            _say("resuming with changed settings (trainer.allow_config_change=true):\n  "
                 + "\n  ".join(differences))
    return previous


def store_record(settings: TrainSettings, previous: RunRecord | None, run_id: str | None,
                 uri: str | None) -> None:
    """Write the run's record for this start (before training, so a crash still leaves it)."""
    if run_id is None and previous is not None:
        # A start without tracking keeps the MLflow run that a later tracked start continues.
        run_id, uri = previous.mlflow_run_id, previous.tracking_uri
    write_record(settings.trainer.storage_path, new_record(
        settings.trainer.run_name, run_id, uri, settings.to_dict(), previous,
    ))


def open_tracking(settings: TrainSettings, previous: RunRecord | None,
                   config_yaml: str) -> tuple[str | None, str | None]:
    """``(run_id, uri)`` of the MLflow run: the stored one when resuming, else a new one."""
    tracking = settings.tracking
    if not tracking.enabled:
        return None, None
    uri = tracking.resolved_uri()
    name = settings.trainer.run_name
    if previous is not None and previous.mlflow_run_id:
        reopen_run(uri, previous.mlflow_run_id, name)
        run_id = previous.mlflow_run_id
        differences = config_differences(previous.settings, settings.to_dict())
        if differences:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            store_client(uri).log_text(run_id, "\n".join(differences) + "\n",
                                       f"config_changes/{stamp}.txt")
    else:
        run_id = create_run(
            uri, tracking.experiment, name, flatten(settings.to_dict()),
            config_yaml or json.dumps(settings.to_dict(), indent=2), tracking.artifact_location,
            tracking.parent_run_id,
        )
    resumed = previous is not None and previous.mlflow_run_id
    _say(f"MLflow run {run_id} ({'resumed' if resumed else 'new'}) at {uri}")
    return run_id, uri


def _say(line: str) -> None:
    print(f"[samdetr] {line}", flush=True)


@dataclass(frozen=True)
class StartWeights:
    """What a fresh start's workers load, as object-store references (None: nothing), and the
    lineage of ``pretrained`` that its checkpoints keep."""
    backbone: Any = None
    pretrained: Any = None
    lineage: dict[str, Any] = field(default_factory=dict)


def _fit(settings: TrainSettings, data: dict[str, Any], run_id: str | None,
         uri: str | None, callbacks: Sequence[Any] = (), start: StartWeights = StartWeights()
         ) -> dict[str, Any]:
    """Ray Train's run (with the run's epoch clock); the summary of its checkpoints."""
    clock = EpochClock.create(settings.trainer.run_name)
    try:
        checksums = {f"{split}_manifest_sha256": data[split]["manifest_sha256"]
                     for split in ("train", "val")}
        job = TrainJob(run_id, uri, data["train"]["categories"], clock.name,
                       train_images=data["train"]["images"], data_sha256=checksums,
                       backbone_weights=start.backbone, pretrained=start.pretrained,
                       init_from=dict(start.lineage))
        trainer = build_trainer(settings, job, callbacks)
        start = time.perf_counter()
        return _summarise(trainer.fit(), settings, time.perf_counter() - start, job.fit_id)
    finally:
        clock.close()


def _checkpoint_file(settings: TrainSettings, checkpoint: Any) -> str:
    """Path or URI of the samdetr checkpoint in a Ray Train checkpoint of this run."""
    folder = os.path.basename(checkpoint.path.rstrip("/"))
    return checkpoint_uri(settings.trainer.storage_path, settings.trainer.run_name, folder)


def _summarise(result: Any, settings: TrainSettings, seconds: float,
               fit_id: str) -> dict[str, Any]:
    if result.error is not None:
        raise result.error
    if not result.best_checkpoints:
        raise RuntimeError("training reported no checkpoint")
    metric = settings.trainer.checkpoint_metric
    # Ties go to the later epoch, as Ray Train ranks its checkpoints (the kept best is that one).
    best, best_metrics = max(result.best_checkpoints,
                             key=lambda pair: (pair[1][metric], pair[1]["epoch"]))
    queue = worker_tracking(result)
    failures = (queue["failures"] + queue["lost"] if queue is not None
                else _worker_tracking_failures(result.metrics or {}, fit_id))
    return {
        "run_name": settings.trainer.run_name,
        "best_checkpoint": _checkpoint_file(settings, best),
        "latest_checkpoint": _checkpoint_file(settings, result.checkpoint),
        "best_metrics": best_metrics,
        "last_metrics": result.metrics,
        "run_path": result.path,
        "seconds": seconds,
        "tracking_failures": failures,
        "tracking_queue": queue,
        "best": best,  # the Ray Checkpoints, read through Ray's own API
        "latest": result.checkpoint,
    }


def worker_tracking(result: Any) -> dict[str, Any] | None:
    """Rank 0's MLflow logger's totals at its close
    (:meth:`pipelines.common.run_logger.RunLogger.counts`,
    which the training function returns: Ray Train's ``Result.return_value``); None when it
    returned none (tracking off)."""
    counts = getattr(result, "return_value", None)
    return dict(counts) if isinstance(counts, dict) else None


def _worker_tracking_failures(metrics: dict[str, Any], fit_id: str) -> int:
    """Rank 0's failed MLflow calls, as its last report of this call says (0 if none)."""
    if metrics.get("fit_id") != fit_id:  # no epoch trained by this call
        return 0
    return int(metrics.get("tracking_failures", 0))


def format_summary(summary: dict[str, Any]) -> str:
    best = summary["best_metrics"]
    last = summary.get("last_metrics") or {}
    stopped = (f" (stopped early after epoch {last['epoch'] + 1}: trainer.early_stop_patience)"
               if last.get("stopped_early") else "")
    lines = [
        f"run {summary['run_name']} finished in {summary['seconds']:.0f}s{stopped}",
        f"  best epoch {best['epoch'] + 1}: AP {best['AP']:.4f}  AP50 {best['AP50']:.4f}  "
        f"AP75 {best['AP75']:.4f}",
        f"  best checkpoint   {summary['best_checkpoint']}",
        f"  latest checkpoint {summary['latest_checkpoint']}",
    ]
    lines += tracking_lines(summary)
    if "mlflow_run_id" in summary:
        lines.append(f"  MLflow run {summary['mlflow_run_id']} in {summary['tracking_uri']}")
        if "model_uri" in summary:
            lines.append(f"  model {summary['model_uri']}")
        if "registered_model" in summary:
            lines.append(f"  registered {summary['registered_model']}")
        if summary["tracking_uri"].startswith("sqlite:"):
            lines.append(
                f"  see it: mlflow ui --backend-store-uri {summary['tracking_uri']}"
            )
    return "\n".join(lines)


def tracking_lines(summary: dict[str, Any]) -> list[str]:
    """The summary's MLflow lines: rank 0's outages and its calls queued, sent late and lost,
    then the other failed calls; empty when tracking had no trouble."""
    queue, failures = summary.get("tracking_queue"), summary.get("tracking_failures", 0)
    lines = []
    if queue is not None and (queue["outages"] or queue["lost"]):
        times = "once" if queue["outages"] == 1 else f"{queue['outages']} times"
        down = (f"the tracking server was unreachable {times} ({duration(queue['outage_s'])} "
                "in all): " if queue["outages"] else "")
        lines.append(f"  MLflow: {down}{queue['queued']} logging call(s) queued, "
                     f"{queue['sent_late']} sent late, {queue['lost']} lost; training was not "
                     "affected")
        failures -= queue["failures"] + queue["lost"]
    if failures > 0:
        lines.append(f"  MLflow: {failures} {'other ' if lines else ''}tracking call(s) failed "
                     "(see the warnings above); training was not affected")
    return lines
