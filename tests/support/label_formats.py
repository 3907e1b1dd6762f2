"""The same small labelled data set written as COCO JSON, as a YOLO tree and as a Pascal VOC
tree, so that tests can check that every format gives the same shards.

Images are power-of-two sized and boxes whole pixels, so YOLO's normalised centres and sizes are
exact binary fractions and every format carries exactly the same pixel boxes. The same image
bytes go into every tree.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

CLASSES = ["bus", "car", "dog"]
#: file stem -> ((width, height), [(class index, [x, y, w, h] pixels), ...]); in id order.
LABELS: dict[str, tuple[tuple[int, int], list[tuple[int, list[int]]]]] = {
    "a": ((64, 32), [(1, [8, 4, 16, 8]), (0, [0, 0, 64, 32])]),
    "b": ((32, 32), []),  # a negative image
    "c": ((16, 64), [(2, [2, 10, 4, 20])]),
}


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40 * seed % 256, 90, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)


def write_coco(folder: Path) -> tuple[Path, Path]:
    """``annotations.json`` and ``images/`` under ``folder``; returns both paths."""
    images, annotations = [], []
    for image_id, (stem, (size, boxes)) in enumerate(LABELS.items(), start=1):
        _write(folder / "images" / f"{stem}.jpg", _jpeg(size, image_id))
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": size[0],
                       "height": size[1]})
        for category, box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category, "bbox": box, "area": box[2] * box[3],
                                "iscrowd": 0})
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)]}
    _write(folder / "annotations.json", json.dumps(document))
    return folder / "annotations.json", folder / "images"


def write_yolo(folder: Path, split: str = "train") -> Path:
    """An Ultralytics tree under ``folder``; returns its dataset YAML."""
    for image_id, (stem, (size, boxes)) in enumerate(LABELS.items(), start=1):
        _write(folder / "images" / split / f"{stem}.jpg", _jpeg(size, image_id))
        (width, height) = size
        lines = [f"{c} {(x + w / 2) / width} {(y + h / 2) / height} {w / width} {h / height}"
                 for c, (x, y, w, h) in boxes]
        _write(folder / "labels" / split / f"{stem}.txt", "".join(f"{line}\n" for line in lines))
    _write(folder / "data.yaml", f"path: .\n{split}: images/{split}\nnames: {CLASSES}\n")
    return folder / "data.yaml"


def write_voc(folder: Path, split: str = "train") -> Path:
    """A VOC tree under ``folder`` (boxes as the devkit writes them: 1-based, inclusive
    corners); returns the folder."""
    for image_id, (stem, (size, boxes)) in enumerate(LABELS.items(), start=1):
        _write(folder / "JPEGImages" / f"{stem}.jpg", _jpeg(size, image_id))
        objects = "".join(
            f"<object><name>{CLASSES[c]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax>"
            "</bndbox></object>" for c, (x, y, w, h) in boxes)
        _write(folder / "Annotations" / f"{stem}.xml",
               f"<annotation><filename>{stem}.jpg</filename><size><width>{size[0]}</width>"
               f"<height>{size[1]}</height><depth>3</depth></size>{objects}</annotation>")
    _write(folder / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{s}\n" for s in LABELS))
    return folder
