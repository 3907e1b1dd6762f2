"""Pictures of detections and their salient points."""

from __future__ import annotations

from collections.abc import Mapping

from PIL import Image, ImageDraw
from torch import Tensor

_COLOURS = [
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#bcf60c",
    "#008080",
    "#9a6324",
]


def draw_detections(
    image: Image.Image,
    detections: Mapping[str, Tensor],
    label_names: Mapping[int, str] | None = None,
    score_threshold: float = 0.0,
    max_detections: int = 10,
    points: Tensor | None = None,
) -> Image.Image:
    """Draw boxes (and optionally salient points) on a copy of ``image``.

    Args:
        image: the original image (any mode; drawn as RGB).
        detections: ``scores`` (k,), ``labels`` (k,), ``boxes`` (k, 4) absolute xyxy pixels of
            ``image`` (the post-processor's output for this image), sorted by score.
        points: optional (k, M, 2) salient points of each detection, normalised (x, y).
    """
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    shown = 0
    for i, (score, label, box) in enumerate(
        zip(
            detections["scores"].tolist(),
            detections["labels"].tolist(),
            detections["boxes"].tolist(),
            strict=True,
        )
    ):
        if score < score_threshold or shown >= max_detections:
            continue
        colour = _COLOURS[shown % len(_COLOURS)]
        shown += 1
        draw.rectangle(box, outline=colour, width=2)
        name = label_names.get(label, str(label)) if label_names else str(label)
        draw.text((box[0] + 3, box[1] + 2), f"{name} {score:.2f}", fill=colour)
        if points is not None:
            for x, y in points[i].tolist():
                cx, cy = x * width, y * height
                draw.ellipse((cx - 3.5, cy - 3.5, cx + 3.5, cy + 3.5), fill=colour)
    return canvas
