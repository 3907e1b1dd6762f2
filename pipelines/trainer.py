"""The Ray ``TorchTrainer`` of one training run, built in one place.

:mod:`pipelines.train` builds it for a single run; a Tune trial builds its own the same way,
adding ``TuneReportCallback()`` to ``callbacks`` and naming the run after the trial::

    job = TrainJob(run_id=None, tracking_uri=None, categories=cats, epoch_clock=clock.name)
    result = build_trainer(settings, job, callbacks=[TuneReportCallback()]).fit()

Starting Ray, opening the MLflow run and registering the model happen around it, in
:mod:`pipelines.train`, :mod:`pipelines.tracking` and :mod:`pipelines.registry`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.train_settings import TrainSettings


@dataclass(frozen=True)
class TrainJob:
    """What every worker needs besides the settings (see :mod:`pipelines.train_loop`).

    ``run_id`` / ``tracking_uri``: the MLflow run rank 0 logs to (``None``: no tracking).
    ``categories``: the shards' ``[{id, name, ...}]``, kept in checkpoints for inference.
    ``epoch_clock``: name of the run's :class:`pipelines.data.EpochClock` actor.
    ``train_images``: the training shards' image count, read once by the driver (the total of
    rank 0's progress bar; ``None``: a bar without a total).
    ``data_sha256``: the manifest checksums of the shard sets (``train_manifest_sha256``,
    ``val_manifest_sha256``), kept in checkpoints so a registered model names its data.
    ``fit_id``: tells this call's reports from those restored checkpoints still carry.
    ``backbone_weights``: an object-store reference to the ImageNet state dict the driver read
    (:func:`pipelines.backbone_weights.share_backbone_weights`), which a fresh start loads
    instead of reading ``model.backbone.weights`` on every worker; None: workers read them.
    """

    run_id: str | None
    tracking_uri: str | None
    categories: list[dict[str, Any]]
    epoch_clock: str
    train_images: int | None = None
    data_sha256: dict[str, str] = field(default_factory=dict)
    fit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    backbone_weights: Any = None

    def loop_config(self, settings: TrainSettings) -> dict[str, Any]:
        """The plain ``train_loop_config`` dict that crosses into the workers."""
        return {"settings": settings.to_dict(), **dataclasses.asdict(self)}


def run_config(settings: TrainSettings, callbacks: Sequence[Any] = ()) -> Any:
    """Ray's ``RunConfig`` of the run: its name and storage (which make a re-run resume), the
    checkpoints kept and the restarts allowed."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    from pipelines.console import train_logging_config

    trainer = settings.trainer
    return RunConfig(
        name=trainer.run_name,
        storage_path=trainer.storage_path,
        # Keeps the best checkpoint by the metric; Ray Train always keeps the latest as well.
        checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=trainer.checkpoint_metric,
            checkpoint_score_order="max",
        ),
        failure_config=FailureConfig(max_failures=trainer.max_failures),
        callbacks=list(callbacks),
        logging_config=train_logging_config(trainer.verbose),  # Ray Train's INFO logs
    )


def build_trainer(
    settings: TrainSettings,
    job: TrainJob,
    callbacks: Sequence[Any] = (),
    config: Any = None,
) -> Any:
    """The ``TorchTrainer`` of ``settings`` (already :meth:`TrainSettings.resolved`).

    ``callbacks`` go into the default :func:`run_config`; ``config`` replaces that run config
    as a whole (it must keep the run's name and storage for resuming to work).
    """
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.data import EveryImageDataConfig, training_dataset
    from pipelines.train_loop import train_loop_per_worker

    if config is not None and callbacks:
        raise ValueError("pass callbacks inside the run config you give, not both")
    trainer = settings.trainer
    dataset = training_dataset(
        settings.data.train_shards, train=True, transform_kwargs=settings.data.train_transform,
        seed=trainer.seed, epoch_clock=job.epoch_clock, rows_per_block=settings.data.rows_per_block,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job.loop_config(settings),
        scaling_config=ScalingConfig(
            num_workers=trainer.num_workers,
            use_gpu=trainer.use_gpu,
            resources_per_worker=trainer.resources_per_worker(),
        ),
        run_config=config if config is not None else run_config(settings, callbacks),
        datasets={"train": dataset},
        dataset_config=EveryImageDataConfig(),
    )
