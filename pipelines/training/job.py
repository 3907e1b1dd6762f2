"""The job of one training run: what the driver hands every Ray Train worker besides the
settings, as the plain dict that crosses into the workers (:meth:`TrainJob.loop_config`)."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any

from pipelines.training.settings import TrainSettings


@dataclass(frozen=True)
class TrainJob:
    """What every worker needs besides the settings (see :mod:`pipelines.training.loop`).

    ``run_id`` / ``tracking_uri``: the MLflow run rank 0 logs to (``None``: no tracking).
    ``categories``: the shards' ``[{id, name, ...}]``, kept in checkpoints for inference.
    ``epoch_clock``: name of the run's :class:`pipelines.data.ingest.EpochClock` actor.
    ``train_images``: the training shards' image count, read once by the driver (the total of
    rank 0's progress bar; ``None``: a bar without a total).
    ``data_sha256``: the manifest checksums of the shard sets (``train_manifest_sha256``,
    ``val_manifest_sha256``), kept in checkpoints so a registered model names its data.
    ``fit_id``: tells this call's reports from those restored checkpoints still carry.
    ``backbone_weights``: an object-store reference to the ImageNet state dict the driver read
    (:func:`pipelines.training.backbone_weights.share_object`), which a fresh start loads
    instead of reading ``model.backbone.weights`` on every worker; None: workers read them.
    ``pretrained``: an object-store reference to the
    :class:`samdetr.pretrained.PretrainedWeights` of ``init.weights`` (read and checked by the
    driver), which a fresh start transfers instead of loading ImageNet weights; None: none.
    ``init_from``: its lineage, kept in every checkpoint (``{}``: not fine-tuned).
    """
    run_id: str | None
    tracking_uri: str | None
    categories: list[dict[str, Any]]
    epoch_clock: str
    train_images: int | None = None
    data_sha256: dict[str, str] = field(default_factory=dict)
    fit_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    backbone_weights: Any = None
    pretrained: Any = None
    init_from: dict[str, Any] = field(default_factory=dict)

    def loop_config(self, settings: TrainSettings) -> dict[str, Any]:
        """The plain ``train_loop_config`` dict that crosses into the workers."""
        return {"settings": settings.to_dict(), **dataclasses.asdict(self)}
