"""What both prediction engines do the same way: keep the detections above the threshold, say
why an image was skipped, and write the picture of an image's detections and its file name,
``images.json`` and ``skipped.txt``. The one-process engine (``predict``) draws in
this process; the Ray engine (``batch_predict``) draws in its model actors and the driver writes
the PNG bytes they return."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PICTURES = "pictures"


def above(result: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    """A ``Predictor`` result (tensors per detection) cut to the detections scoring at least
    ``threshold``."""
    kept = result["scores"] >= threshold
    return {key: value[kept] for key, value in result.items()}


def skip_reason(err: Exception) -> str:
    """The line ``skipped.txt`` and the console give for an image that failed with ``err``."""
    return f"{type(err).__name__}: {str(err)[:200]}"


def picture_name(image_id: int, file_name: str) -> str:
    """``000012_<stem>.png``: the image's id, then its file's stem made safe for any disk."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(file_name).stem)[:80]
    return f"{image_id:06d}_{stem}.png"


def picture(image: Any, result: Mapping[str, Any], names: Mapping[int, str], max_drawn: int,
            salient_points: bool) -> Any:
    """``image`` (PIL) with the boxes, class names and scores of its best ``max_drawn``
    detections and, with ``salient_points``, each one's salient points (paper's Figure 4)."""
    from samdetr.visualize import draw_detections

    points = result["points"] if salient_points else None
    return draw_detections(image, result, names, max_detections=max_drawn, points=points)


def png_bytes(image: Any) -> bytes:
    """A PIL image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_images_json(entries: Iterable[Mapping[str, Any]], out: Path) -> None:
    """``images.json``: ``[{"id", "file_name", "width", "height"}, ...]`` in id order."""
    rows = sorted(entries, key=lambda e: e["id"])
    (out / "images.json").write_text(json.dumps(
        [{"id": e["id"], "file_name": e["file_name"], "width": e["width"],
          "height": e["height"]} for e in rows], indent=1))


def write_skipped(skipped: Iterable[tuple[str, str]], out: Path) -> None:
    """``skipped.txt``: one ``<file>\\t<reason>`` line per image that could not be read."""
    (out / "skipped.txt").write_text("".join(f"{n}\t{why}\n" for n, why in skipped))
