"""Validation pictures for MLflow: a few images with their top detections and salient points."""

from __future__ import annotations

from typing import Any

import torch

from pipelines.training.plots import image_grid  # matplotlib: only where pictures are drawn
from pipelines.training.settings import TrainSettings
from samdetr.data.images import decode_image
from samdetr.data.shards import ShardDataset
from samdetr.inference import Predictor
from samdetr.model.detector import unwrap_model
from samdetr.visualize import draw_detections


def picture_images(settings: TrainSettings) -> list[Any]:
    """The first ``trainer.num_pictures`` validation images, decoded once for every epoch."""
    rows = ShardDataset(settings.data.val_shards)
    count = min(settings.trainer.num_pictures, len(rows))
    return [
        decode_image(row["image"], bool(row["exif_transpose"]))
        for row in (rows[i] for i in range(count))
    ]


def pictures_grid(model, images, settings: TrainSettings, categories, device) -> Any:
    """``images`` with their top detections and salient points, tiled into one picture."""
    names = {c["id"]: c["name"] for c in categories}
    predictor = Predictor(
        unwrap_model(model), settings.data.eval_transform.get("size", 800),
        settings.data.eval_transform.get("max_size", 1333), num_top=10, device=device,
    )
    drawn = []
    # Already decoded with their EXIF orientation applied as the rows say.
    for image, result in zip(images, predictor(images, exif_transpose=False), strict=True):
        keep = result["scores"] >= 0.3
        if not keep.any():  # early in training: show the best few anyway
            keep = torch.arange(len(result["scores"])) < 3
        shown = {k: v[keep].cpu() for k, v in result.items()}
        # Small images are enlarged first so that labels and points stay legible.
        factor = max(1.0, 400 / min(image.size))
        if factor > 1:
            image = image.resize((round(image.width * factor), round(image.height * factor)))
            shown["boxes"] = shown["boxes"] * factor
        drawn.append(draw_detections(image, shown, names, points=shown.get("points")))
    return image_grid(drawn) if drawn else None
