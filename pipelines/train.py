"""Data-parallel SAM-DETR training on Ray Train, evaluated on COCO metrics, tracked in MLflow.

    python -m pipelines.train                                   # conf/train.yaml defaults
    python -m pipelines.train experiment=sam_detr_r50_e12 trainer.use_gpu=true \
        trainer.num_workers=4 tracking.tracking_uri=http://mlflow:5000
    python -m pipelines.train trainer.run_name=r50-a trainer.epochs=50   # resumes run r50-a

Re-running with the same ``trainer.run_name`` and ``trainer.storage_path`` continues from the
run's latest checkpoint (and the same MLflow run). Workers that die are replaced and resume
from the last checkpoint, up to ``trainer.max_failures`` times.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pipelines.train_settings import CHECKPOINT_FILE, TrainSettings, flatten
from samdetr.evaluation import manifest_summary

#: Run tag naming the checkpoint already logged as the run's MLflow model (no duplicate versions).
LOGGED_TAG = "samdetr.logged_checkpoint"


def _check_data(settings: TrainSettings) -> dict[str, Any]:
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
    if train["images"] < settings.trainer.num_workers:
        raise ValueError(
            f"{train['images']} training images cannot feed {settings.trainer.num_workers} workers"
        )
    return {"train": train, "val": val}


def run_training(settings: TrainSettings, config_yaml: str = "") -> dict[str, Any]:
    """Train (or resume) the run; returns a summary with the best checkpoint and metrics."""
    data = _check_data(settings)
    tracking = settings.tracking
    run_id, uri, resumed_run = None, None, False
    if tracking.enabled:
        from pipelines import tracking as mlf

        uri = mlf.absolute_uri(tracking.resolved_uri())
        mlf.check_reachable(uri)  # before any minute is spent on training
        params = flatten(settings.to_dict())
        run_id, resumed_run = mlf.start_or_resume_run(
            uri, tracking.experiment, settings.trainer.run_name, params,
            config_yaml or json.dumps(settings.to_dict(), indent=2),
            tracking.artifact_location,
        )
        print(f"[samdetr] MLflow run {run_id} ({'resumed' if resumed_run else 'new'}) at {uri}")

    try:
        summary = _fit(settings, data, run_id, uri)
        if run_id is not None:
            summary.update(_log_final_model(settings, uri, run_id, summary["best_checkpoint"]))
    except BaseException:
        if run_id is not None:  # whatever stopped the run, MLflow must not show it running
            mlf.finish_run(uri, run_id, ok=False)
        raise
    if run_id is not None:
        mlf.finish_run(uri, run_id, ok=True)
        summary["mlflow_run_id"] = run_id
        summary["tracking_uri"] = uri
    return summary


def _fit(settings: TrainSettings, data: dict[str, Any], run_id: str | None,
         uri: str | None) -> dict[str, Any]:
    """Ray Train's run (with the run's epoch clock); the summary of its checkpoints."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.data import EpochClock, EveryImageDataConfig, training_dataset
    from pipelines.train_loop import train_loop_per_worker

    if not ray.is_initialized():
        ray.init(address=settings.trainer.ray_address, log_to_driver=True)
    trainer_settings = settings.trainer
    clock = EpochClock.create(trainer_settings.run_name)
    try:
        dataset = training_dataset(
            settings.data.train_shards, train=True,
            transform_kwargs=settings.data.train_transform, seed=trainer_settings.seed,
            epoch_clock=clock.name, rows_per_block=settings.data.rows_per_block,
        )
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "settings": settings.to_dict(),
                "run_id": run_id,
                "tracking_uri": uri,
                "categories": data["train"]["categories"],
                "epoch_clock": clock.name,
            },
            scaling_config=ScalingConfig(
                num_workers=trainer_settings.num_workers,
                use_gpu=trainer_settings.use_gpu,
                resources_per_worker=trainer_settings.resources_per_worker(),
            ),
            run_config=RunConfig(
                name=trainer_settings.run_name,
                storage_path=trainer_settings.storage_uri,
                # Keeps the best checkpoint by AP; Ray Train always keeps the latest as well.
                checkpoint_config=CheckpointConfig(
                    num_to_keep=1, checkpoint_score_attribute="AP", checkpoint_score_order="max"
                ),
                failure_config=FailureConfig(max_failures=trainer_settings.max_failures),
            ),
            datasets={"train": dataset},
            dataset_config=EveryImageDataConfig(),
        )
        start = time.perf_counter()
        return _summarise(trainer.fit(), settings, time.perf_counter() - start)
    finally:
        clock.close()


def _summarise(result: Any, settings: TrainSettings, seconds: float) -> dict[str, Any]:
    if result.error is not None:
        raise result.error
    if not result.best_checkpoints:
        raise RuntimeError("training reported no checkpoint")
    best, best_metrics = max(result.best_checkpoints, key=lambda pair: pair[1]["AP"])
    return {
        "run_name": settings.trainer.run_name,
        "best_checkpoint": os.path.join(best.path, CHECKPOINT_FILE),
        "latest_checkpoint": os.path.join(result.checkpoint.path, CHECKPOINT_FILE),
        "best_metrics": best_metrics,
        "last_metrics": result.metrics,
        "run_path": result.path,
        "seconds": seconds,
    }


def _log_final_model(settings: TrainSettings, uri: str, run_id: str, checkpoint: str) -> dict:
    """The best checkpoint as an MLflow model (registered and aliased if configured)."""
    tracking = settings.tracking
    if not tracking.log_model:
        return {}
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.mlflow_model import log_detector_model

    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    if tags.get(LOGGED_TAG) == checkpoint:  # a re-run that trained nothing new
        kept = {"model_uri": tags.get(LOGGED_TAG + ".uri"),
                "registered_model": tags.get(LOGGED_TAG + ".version")}
        return {k: v for k, v in kept.items() if v}
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = log_detector_model(
            _local(checkpoint), name="model", registered_model_name=tracking.registered_model
        )
    out = {"model_uri": info.model_uri}
    if tracking.registered_model:
        version = info.registered_model_version
        out["registered_model"] = f"{tracking.registered_model} v{version}"
        if tracking.alias:
            client.set_registered_model_alias(
                tracking.registered_model, tracking.alias, version
            )
            out["registered_model"] += f" @{tracking.alias}"
    client.set_tag(run_id, LOGGED_TAG, checkpoint)
    client.set_tag(run_id, LOGGED_TAG + ".uri", out["model_uri"])
    client.set_tag(run_id, LOGGED_TAG + ".version", out.get("registered_model", ""))
    return out


def _local(path: str) -> str:
    """A local copy of a checkpoint file that may live on object storage."""
    if "://" not in path:
        return path
    import tempfile

    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    local = os.path.join(tempfile.mkdtemp(prefix="samdetr-"), CHECKPOINT_FILE)
    with fs.open_input_stream(inner) as src, open(local, "wb") as dst:
        dst.write(src.read())
    return local


def format_summary(summary: dict[str, Any]) -> str:
    best = summary["best_metrics"]
    lines = [
        f"run {summary['run_name']} finished in {summary['seconds']:.0f}s",
        f"  best epoch {best['epoch'] + 1}: AP {best['AP']:.4f}  AP50 {best['AP50']:.4f}  "
        f"AP75 {best['AP75']:.4f}",
        f"  best checkpoint   {summary['best_checkpoint']}",
        f"  latest checkpoint {summary['latest_checkpoint']}",
    ]
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


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path="../conf", config_name="train")
    def _run(cfg: DictConfig) -> None:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        settings = TrainSettings.from_dict(plain)
        print(format_summary(run_training(settings, OmegaConf.to_yaml(cfg, resolve=True))))

    _run()


if __name__ == "__main__":
    main()
