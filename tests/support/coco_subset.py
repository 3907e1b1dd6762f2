"""Writes a COCO instances file holding the first images of coco128-dev (by id)."""

from __future__ import annotations

import json
from pathlib import Path


def write_coco_subset(coco128_dir: Path, out_file: Path, num_images: int) -> list[dict]:
    """Keep the ``num_images`` lowest-id images and their annotations; returns the images."""
    data = json.loads((coco128_dir / "annotations.json").read_text())
    images = sorted(data["images"], key=lambda i: i["id"])[:num_images]
    ids = {i["id"] for i in images}
    annotations = [a for a in data["annotations"] if a["image_id"] in ids]
    out_file.write_text(json.dumps({**data, "images": images, "annotations": annotations}))
    return images
