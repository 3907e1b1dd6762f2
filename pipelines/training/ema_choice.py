"""A run's moving average of the weights (``trainer.ema_decay``): built and restored on each
worker, scored beside the trained weights every epoch, and the checkpoint's model chosen
between the two (``trainer.ema_weights``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from samdetr.engine.class_metrics import ClassMetrics
from samdetr.engine.coco_eval import METRIC_NAMES
from samdetr.engine.ema import ModelEma


@dataclass(frozen=True)
class Scores:
    """One set of weights' validation: the 12 COCO metrics and each class's numbers (rank 0)."""
    metrics: dict[str, float]
    classes: list[ClassMetrics]


@dataclass(frozen=True)
class Choice:
    """The checkpoint's model for an epoch: ``weights`` (``"raw"`` or ``"ema"``), its
    ``scores``, and ``numbers`` for the history (both sets' metrics as ``raw/...`` and
    ``ema/...``, and ``ema_used``; empty without an EMA)."""
    weights: str
    scores: Scores
    numbers: dict[str, float]


def worker_ema(trainer: Any, model: nn.Module, payload: dict[str, Any] | None) -> ModelEma | None:
    """The average of ``model``'s weights (already restored) when ``trainer`` (the run's
    ``TrainerSettings``) asks for one, continued from the checkpoint ``payload``'s if it has
    one; None otherwise."""
    config = trainer.ema_config
    if not config.enabled:
        return None
    ema = ModelEma(model, config)
    if payload is not None and payload.get("ema"):
        ema.load_state_dict(payload["ema"])
    return ema


def choose(trainer: Any, raw: Scores, ema: Scores | None) -> Choice:
    """Which weights the epoch's checkpoint offers as its model: ``trainer.ema_weights`` says
    ``ema``, ``raw``, or ``better`` (the higher ``trainer.checkpoint_metric``; the trained
    weights on a tie)."""
    if ema is None:
        return Choice("raw", raw, {})
    metric = trainer.checkpoint_metric
    use_ema = trainer.ema_weights == "ema" or (
        trainer.ema_weights == "better" and ema.metrics[metric] > raw.metrics[metric])
    numbers = {f"raw/{k}": float(raw.metrics[k]) for k in METRIC_NAMES}
    numbers.update({f"ema/{k}": float(ema.metrics[k]) for k in METRIC_NAMES})
    numbers["ema_used"] = float(use_ema)
    return Choice("ema" if use_ema else "raw", ema if use_ema else raw, numbers)
