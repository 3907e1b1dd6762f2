"""The Ray ``TorchTrainer`` of one training run, built in one place.

:mod:`pipelines.training.run` builds it for a single run; a Tune trial builds its own the same way,
adding ``TuneReportCallback()`` to ``callbacks`` and naming the run after the trial::
    job = TrainJob(run_id=None, tracking_uri=None, categories=cats, epoch_clock=clock.name)
    result = build_trainer(settings, job, callbacks=[TuneReportCallback()]).fit()

Starting Ray, opening the MLflow run and registering the model happen around it, in
:mod:`pipelines.training.run`, :mod:`pipelines.common.tracking` and
:mod:`pipelines.registry.register`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipelines.common.console import train_logging_config
from pipelines.data.ingest import EveryImageDataConfig, training_dataset
from pipelines.training.job import TrainJob
from pipelines.training.loop import train_loop_per_worker
from pipelines.training.settings import TrainSettings


def run_config(settings: TrainSettings, callbacks: Sequence[Any] = ()) -> Any:
    """Ray's ``RunConfig`` of the run: its name and storage (which make a re-run resume), the
    checkpoints kept and the restarts allowed."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

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
