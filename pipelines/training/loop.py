"""The function every Ray Train worker runs: DDP training, per-epoch COCO evaluation spread
over the workers, checkpoints, and rank 0's MLflow logging.

``train_loop_config`` is the plain dict of :meth:`pipelines.training.trainer.TrainJob.loop_config`:
``settings`` (``TrainSettings.to_dict()``) and the fields of
:class:`pipelines.training.trainer.TrainJob`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipelines.common.checkpoints import CHECKPOINT_FILE, HISTORY_FILE
from pipelines.common.console import EpochBar, estimated_steps, quiet_worker
from pipelines.common.run_logger import RunLogger
from pipelines.data.ingest import EpochClock, PadCollate
from pipelines.training.class_report import class_rows, history_metrics, log_classes
from pipelines.training.ema_choice import Choice, Scores, choose, worker_ema
from pipelines.training.epoch_report import combined_metrics, epoch_line
from pipelines.training.job import TrainJob
from pipelines.training.pictures import picture_images, pictures_grid
from pipelines.training.plots import convergence_figure
from pipelines.training.pretrained import start_model
from pipelines.training.settings import TrainSettings
from samdetr.builder import build_criterion
from samdetr.checkpoint import read_checkpoint, save_checkpoint
from samdetr.engine.activation_checkpointing import checkpoint_activations
from samdetr.engine.class_metrics import ClassMetrics
from samdetr.engine.coco_eval import COCOEvaluator
from samdetr.engine.early_stopping import stop_reason
from samdetr.engine.ema import ModelEma
from samdetr.engine.evaluation import eval_loader, ground_truth
from samdetr.engine.loop import predict, train_one_epoch
from samdetr.engine.optim import build_optimizer, build_scheduler
from samdetr.engine.reproducibility import rng_state, seed_everything
from samdetr.engine.step import StepOptions
from samdetr.model.criterion import distributed_mean
from samdetr.model.detector import unwrap_model
from samdetr.model.postprocess import PostProcess


class InjectedFailure(RuntimeError):
    """Raised by ``trainer.fail_after_epoch`` to exercise Ray Train's FailureConfig."""


def _say(line: str) -> None:
    # Ray Train V2 patches print() to also log it, which shows every line twice on the driver.
    sys.stdout.write(f"[samdetr] {line}\n")
    sys.stdout.flush()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank (a list of one without a process group)."""
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _restore(checkpoint, model, optimizer, scheduler, grad_scaler
             ) -> dict[str, Any] | None:
    """Load the run's latest Ray Train checkpoint (if any) into the parts (before DDP wraps
    the model)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        payload = read_checkpoint(os.path.join(folder, CHECKPOINT_FILE))
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if grad_scaler is not None and payload.get("grad_scaler"):  # the loss scale goes on
        grad_scaler.load_state_dict(payload["grad_scaler"])
    return payload


def _evaluate(model, loader, coco_gt, device, autocast_dtype
              ) -> tuple[dict[str, float], list[ClassMetrics]]:
    """Inference on this rank's share, gathered; COCOeval once on rank 0: the 12 metrics on
    every rank, each class's numbers (from the same evaluation) on rank 0 only."""
    detections = predict(unwrap_model(model), loader, device, PostProcess(100), autocast_dtype)
    if _distributed():  # only rank 0 scores, so only rank 0 receives the detections
        parts: list[Any] | None = [None] * dist.get_world_size() if coco_gt is not None else None
        dist.gather_object(detections, parts, dst=0)
        detections = [d for part in parts for d in part] if parts is not None else []
    metrics, classes = None, []
    if coco_gt is not None:
        # Every validation image counts, those without a detection too.
        evaluator = COCOEvaluator(coco_gt, only_seen_images=False)
        evaluator.update(detections)
        metrics, classes = evaluator.summarize(), evaluator.per_class()
    if _distributed():
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics, classes


@dataclass
class _Worker:
    """What one worker trains with: its settings, place, model parts and (rank 0) logger."""
    settings: TrainSettings
    job: TrainJob
    rank: int
    device: torch.device
    model: torch.nn.Module  # DDP-wrapped
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    logger: Any = None  # pipelines.common.run_logger.RunLogger on rank 0 of a tracked run
    grad_scaler: Any = None  # torch.amp.GradScaler of an fp16 run
    ema: ModelEma | None = None  # the moving average of the weights (trainer.ema_decay)


@dataclass
class _Progress:
    """Where the run stands: restored from the checkpoint, advanced every epoch."""
    start_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False
    # What MLflow already holds (a restart in the middle of an epoch): not logged again.
    logged_step: int | None = None
    logged_epoch: int | None = None


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    settings = TrainSettings.from_dict(config["settings"])
    quiet_worker(settings.trainer.verbose)
    job = TrainJob(**{k: v for k, v in config.items() if k != "settings"})
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cuda":  # collectives on objects (NCCL) use the current device
        torch.cuda.set_device(device)
    seed_everything(settings.trainer.seed + rank)

    checkpoint = ray.train.get_checkpoint()
    # Starting weights only for a fresh start (a checkpoint has all the weights), as the
    # driver read them: one read for the run, and a GPU node may have no network access.
    fresh = checkpoint is None
    pretrained = ray.get(job.pretrained) if fresh and job.pretrained is not None else None
    shared = ray.get(job.backbone_weights) if fresh and pretrained is None \
        and job.backbone_weights is not None else None
    model, _ = start_model(settings, pretrained, shared, fresh)
    model = model.to(device)
    if settings.trainer.activation_checkpointing:
        checkpoint_activations(model, settings.trainer.activation_checkpointing)
    criterion = build_criterion(settings.detector).to(device)
    optimizer = build_optimizer(model, settings.optim)
    scheduler = build_scheduler(optimizer, settings.optim, epochs=settings.trainer.epochs)
    # float16 needs its loss scaled (bfloat16 has float32's range and does not).
    grad_scaler = torch.amp.GradScaler(device.type) if settings.trainer.fp16 else None
    payload = _restore(checkpoint, model, optimizer, scheduler, grad_scaler)
    ema = worker_ema(settings.trainer, model, payload)
    if payload is not None and payload.get("init_from"):  # what the run was fine-tuned from
        job = dataclasses.replace(job, init_from=dict(payload["init_from"]))
    model = ray.train.torch.prepare_model(model)

    logger = None
    if rank == 0 and job.run_id:
        logger = RunLogger(job.tracking_uri, job.run_id,
                           retry_after_s=settings.tracking.retry_after_s, warn=_say)
    worker = _Worker(settings, job, rank, device, model, criterion, optimizer, scheduler,
                     logger, grad_scaler, ema)
    try:
        _train(worker, _progress(payload, logger))
    finally:
        if logger is not None:
            logger.close(settings.tracking.flush_timeout_s)
    # The MLflow logger's totals after its close, for the run's summary (Result.return_value).
    return logger.counts() if logger is not None else None


def _progress(payload: dict[str, Any] | None, logger: Any) -> _Progress:
    """The run's state from the restored checkpoint; on a resume, what MLflow already holds,
    and the epochs it missed (the store was down) logged now from the checkpoint's history.

    Without a checkpoint the MLflow run may still hold epochs: a run stopped after logging an
    epoch but before Ray Train registered its checkpoint trains that epoch again, and must not
    log it twice."""
    if payload is None:
        progress = _Progress()
        if logger is not None:
            progress.logged_step = logger.last_step("train/loss")
            progress.logged_epoch = logger.last_step("loss")
        return progress
    progress = _Progress(payload["epoch"] + 1, payload["global_step"], list(payload["history"]),
                         resumed=True)
    if logger is not None:
        progress.logged_step = logger.last_step("train/loss")
        progress.logged_epoch = logger.last_step("loss")
        if progress.logged_epoch is not None:
            for entry in (h for h in progress.history if h["epoch"] > progress.logged_epoch):
                logger.log_metrics(history_metrics(entry), entry["epoch"])
    return progress


def _train(worker: _Worker, progress: _Progress) -> None:
    """The epochs still to do."""
    settings, rank, logger = worker.settings, worker.rank, worker.logger
    trainer, data = settings.trainer, settings.data
    pictures = picture_images(settings) if logger is not None else []
    coco_gt = ground_truth(data.val_shards) if rank == 0 else None
    world_size = ray.train.get_context().get_world_size()
    val_batches = eval_loader(
        data.val_shards, batch_size=data.eval_batch_size, rank=rank, world_size=world_size,
        num_workers=data.eval_loader_workers, **data.eval_transform,
    )
    train_shard = ray.train.get_dataset_shard("train")
    # For the progress bar's total only: an estimate (see estimated_steps).
    images = worker.job.train_images
    steps = estimated_steps(images, data.batch_size, world_size) if images else None
    stopped = _stopped_early(trainer, progress.history)
    if rank == 0:
        if stopped:
            _say(f"run {trainer.run_name}: stopped early before ({stopped}); nothing to train")
        elif progress.start_epoch >= trainer.epochs:
            _say(f"run {trainer.run_name}: all {trainer.epochs} epochs already done")
        elif progress.resumed:
            _say(f"run {trainer.run_name}: resuming at epoch {progress.start_epoch + 1}")

    for epoch in range(progress.start_epoch, trainer.epochs if not stopped else 0):
        # Seeding per epoch makes a resumed run draw what an uninterrupted one would.
        seed_everything(trainer.seed + rank + 1000 * epoch)
        if rank == 0:  # before this epoch's first batch
            EpochClock.set_epoch(worker.job.epoch_clock, epoch)
        start = time.perf_counter()
        batches = _epoch_batches(train_shard, settings, epoch)
        bar = EpochBar(epoch, trainer.epochs, steps, world_size) if rank == 0 else None
        if worker.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(worker.device)
        try:
            stats = _train_epoch(worker, progress, batches, bar)
        finally:
            if bar is not None:
                bar.close()
        if worker.device.type == "cuda":
            stats["gpu_mem_peak_gib"] = torch.cuda.max_memory_allocated(worker.device) / 2**30
        all_stats = _gather(stats)
        worker.scheduler.step()
        progress.global_step += all_stats[0]["steps"]
        choice = _validate(worker, val_batches, coco_gt)
        classes = choice.scores.classes
        epoch_metrics = combined_metrics(choice.scores.metrics, all_stats,
                                         time.perf_counter() - start,
                                         scaled=worker.grad_scaler is not None)
        epoch_metrics.update(choice.numbers)
        # Each class's numbers are rank 0's (it scores); its history is the one checkpointed.
        progress.history.append({"epoch": epoch, **epoch_metrics,
                                 **({"classes": class_rows(classes)} if classes else {})})
        if rank == 0:
            _say(epoch_line(epoch, trainer.epochs, epoch_metrics, progress.history))
        stopped = _stopped_early(trainer, progress.history)
        _report(worker, epoch, epoch_metrics, progress, choice.weights, bool(stopped))
        # After the checkpoint: MLflow never holds an epoch the run's checkpoints lack (a Tune
        # scheduler may stop the run while it trains the next one). An epoch its checkpoint
        # holds but MLflow missed is logged from the history on a resume (_progress), or, for
        # a stopped trial, by the sweep (pipelines.sweeps.tracking.complete_trial).
        if logger is not None:
            if progress.logged_epoch is None or epoch > progress.logged_epoch:
                _log_epoch(worker, epoch, epoch_metrics, progress.history, pictures)
                log_classes(logger, epoch, classes)
            logger.flush(settings.tracking.flush_timeout_s)
        if trainer.fail_after_epoch == epoch and not progress.resumed and rank == 0:
            raise InjectedFailure(f"injected after epoch {epoch} (trainer.fail_after_epoch)")
        if stopped:  # every rank holds the same history, so every rank stops here
            if rank == 0:
                _say(f"run {trainer.run_name}: stopping early after epoch {epoch + 1}: {stopped}")
            break


def _stopped_early(trainer: Any, history: list[dict[str, Any]]) -> str:
    """Why the run stops before its last epoch (``trainer.early_stop_*``), or ""."""
    return stop_reason(history, trainer.checkpoint_metric, trainer.early_stop_patience,
                       trainer.early_stop_min_delta)


def _epoch_batches(shard: Any, settings: TrainSettings, epoch: int) -> Any:
    """This worker's training batches of ``epoch`` from its Ray Data ``shard``."""
    data, seed = settings.data, settings.trainer.seed
    return shard.iter_torch_batches(
        batch_size=data.batch_size,
        collate_fn=PadCollate(),
        local_shuffle_buffer_size=data.shuffle_buffer or None,
        local_shuffle_seed=seed + epoch if data.shuffle_buffer else None,
        prefetch_batches=2,  # keep decoded batches ready while the step runs
    )


def _train_epoch(worker: _Worker, progress: _Progress, batches: Any,
                 bar: EpochBar | None = None) -> dict[str, Any]:
    """One epoch of DDP steps; rank 0 logs the steps MLflow does not hold yet and moves its
    progress ``bar`` (each of its batches a step; the loss every ``log_every`` steps)."""
    settings, logger, base = worker.settings, worker.logger, progress.global_step
    if bar is not None:
        batches = bar.wrap(batches)

    def on_step(step: int, values: dict[str, float]) -> None:
        if bar is not None:
            bar.set_loss(values["loss"])
        if logger is not None and (progress.logged_step is None
                                   or base + step > progress.logged_step):
            logger.log_metrics({f"train/{k}": v for k, v in values.items()}, base + step)

    options = StepOptions(
        clip_max_norm=settings.optim.clip_max_norm,
        autocast_dtype=settings.trainer.autocast_dtype,
        world_reduce=distributed_mean,
        on_step=on_step,
        log_every=settings.trainer.log_every,
        after_step=worker.scheduler.step_batch,  # the warm-up moves per step
        grad_scaler=worker.grad_scaler,
        accumulate=settings.trainer.accumulate,
        ema=worker.ema,
    )
    return train_one_epoch(worker.model, worker.criterion, worker.optimizer, batches,
                           worker.device, options)


def _log_epoch(worker: _Worker, epoch: int, epoch_metrics: dict[str, float],
               history: list[dict[str, Any]], pictures: list[Any]) -> None:

    logger = worker.logger
    logger.log_metrics(epoch_metrics, step=epoch)
    logger.log_figure(convergence_figure(history), "convergence.png")
    if pictures:
        categories = worker.job.categories
        grid = pictures_grid(worker.model, pictures, worker.settings, categories, worker.device)
        if grid is not None:
            logger.log_image(grid, f"predictions/epoch_{epoch + 1:03d}.png")


def _validate(worker: _Worker, loader: Any, coco_gt: Any) -> Choice:
    """Score the trained weights and (with an EMA) the average; the checkpoint's choice."""
    dtype = worker.settings.trainer.autocast_dtype
    raw = Scores(*_evaluate(worker.model, loader, coco_gt, worker.device, dtype))
    averaged = None
    if worker.ema is not None:
        averaged = Scores(*_evaluate(worker.ema.module, loader, coco_gt, worker.device, dtype))
    return choose(worker.settings.trainer, raw, averaged)


def _report(worker: _Worker, epoch: int, metrics: dict[str, float], progress: _Progress,
            weights: str = "raw", stopped_early: bool = False) -> None:
    """``ray.train.report`` on every rank (a barrier); rank 0 attaches the checkpoint, whose
    model is the ``weights`` (``raw`` or ``ema``)."""
    settings, job = worker.settings, worker.job
    # For the driver only, not the checkpoint: which call reported, epochs trained (a Tune
    # scheduler's clock, unchanged by restarts), whether the run stops here, and tracking
    # failures.
    status: dict[str, Any] = {"fit_id": job.fit_id, "epochs_done": epoch + 1,
                              "stopped_early": stopped_early}
    if worker.logger is not None:
        status["tracking_failures"] = worker.logger.failures + worker.logger.dropped
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if worker.rank == 0:
            save_checkpoint(
                os.path.join(folder, CHECKPOINT_FILE),
                unwrap_model(worker.model),
                settings.detector,
                optimizer=worker.optimizer.state_dict(),
                scheduler=worker.scheduler.state_dict(),
                grad_scaler=worker.grad_scaler.state_dict() if worker.grad_scaler else {},
                epoch=epoch,
                global_step=progress.global_step,
                history=progress.history,
                metrics=metrics,
                rng=rng_state(),
                settings=settings.to_dict(),
                eval_transform=dict(settings.data.eval_transform),
                eval_batch_size=settings.data.eval_batch_size,
                categories=list(job.categories),
                data=dict(job.data_sha256),
                mlflow_run_id=job.run_id or "",
                init_from=dict(job.init_from),
                **({"ema": worker.ema.state_dict(), "weights": weights} if worker.ema else {}),
            )
            with open(os.path.join(folder, HISTORY_FILE), "w") as out:
                json.dump(progress.history, out, default=float)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(
            {"epoch": epoch, **metrics, **status}, checkpoint=checkpoint,
            checkpoint_dir_name=f"epoch_{epoch + 1:04d}",
        )
