"""A sweep in MLflow: the trials' child runs completed, the parent's results, and the winner.

Each trial's training run is an MLflow child of the sweep's parent run (``tracking.parent_run_id``)
and logs its params and per-epoch metrics itself. When the sweep ends, :func:`complete_trial`
logs each trial's best checkpoint as the child's model (not registered), logs the epochs its
checkpoint holds but the run missed, tags it with its outcome and closes it: a trial stopped by
the scheduler had its process killed, so nothing else would.
:func:`log_results` gives the parent the table and plots; :func:`register_winner` makes the best
trial's model a new version of the registered model, tagged, with the sweep's alias. Trials never
touch the registry. Every call here is wrapped by the caller: a tracking failure is a warning.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.common.checkpoints import CHECKPOINT_FILE
from pipelines.common.tracking import quiet_mlflow, store_client, using_store
from pipelines.common.tracking_settings import TrackingSettings
from pipelines.registry.model_facts import PREFIX as FACT
from pipelines.registry.model_facts import logged_model_facts
from pipelines.registry.register import log_best_model
from pipelines.sweeps.report import (
    TrialOutcome,
    metric_by_epoch_figure,
    metric_vs_param_figure,
    results_csv,
)
from pipelines.training.class_report import history_metrics
from pipelines.training.run_record import kept_checkpoints, run_history

#: Tag prefixes on the trials' runs and the winner's model version.
TAG = "sweep."


def best_kept(outcome: TrialOutcome, run_root: str, metric: str) -> tuple[int, str] | None:
    """``(epoch, folder)`` of the trial's best checkpoint still on storage, or None."""
    kept = kept_checkpoints(run_root)
    scored = [h for h in outcome.history if int(h["epoch"]) in kept and metric in h]
    if not scored:
        return None
    epoch = int(max(scored, key=lambda h: h[metric])["epoch"])
    return epoch, kept[epoch]


def _ray_checkpoint(folder: str) -> Any:
    from ray.train import Checkpoint

    from samdetr.data.storage import resolve_fs

    fs, path = resolve_fs(folder)
    return Checkpoint(path, filesystem=fs)


def complete_trial(uri: str, outcome: TrialOutcome, run_root: str, metric: str) -> str | None:
    """Log the trial's best checkpoint as its child run's model, tag and close the run.
    Returns the logged model's URI (None without a checkpoint)."""
    client = store_client(uri)
    run_id = outcome.mlflow_run_id
    model_uri = None
    found = best_kept(outcome, run_root, metric)
    if found is not None:
        settings = TrackingSettings(tracking_uri=uri, log_model=True)
        with quiet_mlflow():
            logged = log_best_model(settings, uri, run_id, f"{found[1]}/{CHECKPOINT_FILE}",
                                    _ray_checkpoint(found[1]))
        model_uri = logged.get("model_uri")
    log_missed_epochs(client, run_id, run_history(run_root) or [])
    for key, value in {"trial_id": outcome.trial_id, "status": outcome.status,
                       "stopped_early": str(outcome.status == "stopped early").lower(),
                       "epochs_run": str(outcome.epochs_run)}.items():
        client.set_tag(run_id, TAG + key, value)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, "FAILED" if outcome.status == "error" else "FINISHED")
    return model_uri


def log_missed_epochs(client: Any, run_id: str, history: list[dict[str, Any]]) -> None:
    """Log the epochs the trial's checkpoint holds but its run lacks: the scheduler can stop a
    trial between its checkpoint and its logging, and a stopped trial never resumes to log them
    itself."""
    from mlflow.entities import Metric

    logged = max((m.step for m in client.get_metric_history(run_id, "loss")), default=-1)
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, int(entry["epoch"]))
               for entry in history if int(entry["epoch"]) > logged
               for key, value in history_metrics(entry).items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def log_results(uri: str, run_id: str, outcomes: list[TrialOutcome], metric: str,
                table: str) -> None:
    """The parent run's ``results.csv``, ``trials.txt`` and plots, and the best metric."""
    client = store_client(uri)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "results.csv").write_text(results_csv(outcomes, metric))
        (root / "trials.txt").write_text(table + "\n")
        metric_vs_param_figure(outcomes, metric).savefig(root / f"{metric}_vs_params.png", dpi=110)
        metric_by_epoch_figure(outcomes, metric).savefig(root / f"{metric}_by_epoch.png", dpi=110)
        client.log_artifacts(run_id, folder)
    scores = [o.best(metric)[metric] for o in outcomes if o.best(metric) is not None]
    if scores:
        client.log_metric(run_id, f"best_{metric}", max(scores))
    client.set_tag(run_id, TAG + "trials", str(len(outcomes)))


def winner_tags(outcome: TrialOutcome, metric: str, parent_run_id: str | None,
                data_sha256: str, sweep_name: str) -> dict[str, str]:
    """The model version's tags: the trial's params and best metrics, and where it came from."""
    best = outcome.best(metric) or {}
    tags = {f"param.{name}": str(value) for name, value in outcome.params.items()}
    tags.update({f"metric.{k}": f"{v:.6g}" for k, v in best.items() if k.startswith("AP")})
    tags.update({
        "best_epoch": str(int(best.get("epoch", -1)) + 1),
        TAG + "name": sweep_name,
        TAG + "trial_id": outcome.trial_id,
        TAG + "parent_run_id": parent_run_id or "",
        # The model's facts (pipelines.registry.model_facts) name these too; set here in case they
        # are
        # missing (a model logged before the facts were).
        FACT + "source_run_id": outcome.mlflow_run_id or "",
        FACT + "train_manifest_sha256": data_sha256,
    })
    return tags


def register_winner(uri: str, tracking: TrackingSettings, model_uri: str,
                    tags: dict[str, str], alias: str) -> str:
    """A new version of ``tracking.registered_model`` from the logged ``model_uri``, tagged
    with ``tags`` and the logged model's facts, with ``alias`` pointed at it, all in the store
    ``uri``; returns ``"name vN @alias"``."""
    import mlflow

    client = store_client(uri)
    name = tracking.registered_model
    tags = {**logged_model_facts(client, model_uri), **tags}
    with quiet_mlflow(), using_store(uri):  # register_model knows only the process-wide URIs
        version = mlflow.register_model(model_uri, name, tags=tags).version
    client.set_registered_model_alias(name, alias, version)
    return f"{name} v{version} @{alias}"

