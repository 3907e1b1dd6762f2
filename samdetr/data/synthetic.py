"""A synthetic COCO-format detection dataset of coloured shapes on a textured background.

``make_synthetic_coco`` writes ``out_dir/images/<id>.jpg`` (or ``.png``) and
``out_dir/annotations.json`` in the COCO *instances* format (no ``segmentation``). It is meant for
tests and demos of the data pipeline and training loop: small, fast (100 images of ~256 px in well
under a second), and deterministic (the same arguments give a byte-identical annotation file and
identical images).

Ground truth conventions: ``bbox`` is COCO ``[x, y, w, h]`` in pixels, tight around the *visible*
pixels of the shape (later shapes may cover at most ``1 - min_visible`` of an earlier one, so no
object is hidden); ``area`` is the number of visible pixels; ``iscrowd`` is 0. Each annotation
also carries the extra key ``color`` (the shape's RGB fill, unique within its image), which
pycocotools ignores and tests use to find the shape's pixels. Category ids are deliberately
non-contiguous (1, 3, 7, 13, ... by default), so ``num_classes = max id + 1`` is exercised.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("square", "disc", "triangle", "diamond", "ring")

# saturated fills at corners of the RGB cube: channel spread 215 (far from the low-saturation
# background), pairwise L-infinity distance 215, and no fill near the blend of two others (JPEG's
# chroma subsampling blends touching shapes), so each shape is found by its colour
PALETTE = (
    (235, 20, 20),
    (20, 235, 20),
    (20, 20, 235),
    (235, 235, 20),
    (235, 20, 235),
    (20, 235, 235),
)


def default_category_ids(num_classes: int) -> list[int]:
    """Non-contiguous ids ``1 + k + k**2``: 1, 3, 7, 13, 21, ..."""
    return [1 + k + k * k for k in range(num_classes)]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A ``uint8 (H, W, 3)`` low-saturation texture: tinted gradient + blobs + pixel noise."""
    base = rng.uniform(80, 170)
    tint_a, tint_b = rng.uniform(-12, 12, size=3), rng.uniform(-12, 12, size=3)
    ramp = np.linspace(0.0, 1.0, width)[None, :, None] * rng.uniform(0.3, 1.0)
    ramp = ramp + np.linspace(0.0, 1.0, height)[:, None, None] * rng.uniform(0.0, 0.7)
    image = base + tint_a + (tint_b - tint_a) * ramp / ramp.max()
    # coarse texture: low-resolution noise upsampled with nearest-neighbour blocks
    cell = int(rng.integers(8, 24))
    coarse = rng.normal(0.0, 8.0, size=(height // cell + 1, width // cell + 1, 1))
    image = image + np.kron(coarse, np.ones((cell, cell, 1)))[:height, :width]
    image = image + rng.normal(0.0, 5.0, size=(height, width, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _shape_mask(shape: str, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of ``shape`` filling the inclusive pixel box ``(x0, y0, x1, y1)``."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "square":
        draw.rectangle(box, fill=255)
    elif shape == "disc":
        draw.ellipse(box, fill=255)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=max(2, (x1 - x0) // 5))
    else:  # validated earlier
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(mask) > 0


@dataclass(frozen=True)
class _Settings:
    """How the images of a data set look; the keyword arguments of :func:`make_synthetic_coco`
    (documented there), checked on construction."""

    image_size: tuple[int, int]
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    max_objects: int
    object_size: tuple[float, float]
    min_visible: float
    image_format: str
    jpeg_quality: int

    def __post_init__(self) -> None:
        low, high = self.image_size
        if not 16 <= low <= high:
            raise ValueError(
                f"image_size must be (min, max) with 16 <= min <= max, got {self.image_size}"
            )
        classes, ids = self.classes, self.category_ids
        unknown = [c for c in classes if c not in SHAPES]
        if not classes or unknown or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct names from {SHAPES}, got {classes}")
        if not 1 <= self.max_objects <= len(PALETTE):
            raise ValueError(f"max_objects must be in [1, {len(PALETTE)}], got {self.max_objects}")
        if len(ids) != len(classes) or len(set(ids)) != len(ids) or min(ids) < 1:
            raise ValueError(
                f"category_ids must be {len(classes)} distinct ids >= 1, got {list(ids)}"
            )
        if not 0.0 < self.object_size[0] <= self.object_size[1] <= 1.0:
            raise ValueError(
                f"object_size must be (min, max) fractions in (0, 1], got {self.object_size}"
            )
        if not 0.0 < self.min_visible <= 1.0:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")


def _draw_image(
    rng: np.random.Generator, width: int, height: int, settings: _Settings
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int], np.ndarray]]]:
    """Render one image; returns ``(pixels (H, W, 3) uint8, objects)`` with objects as
    ``(class_index, colour, visible_mask (H, W) bool)``."""
    pixels = _background(rng, width, height)
    owner = np.zeros((height, width), dtype=np.int16)  # 0 = background, k = k-th object
    drawn: list[tuple[int, tuple[int, int, int], int]] = []  # class, colour, full pixel count
    wanted = int(rng.integers(1, settings.max_objects + 1))
    colours = rng.permutation(len(PALETTE))[:wanted]
    short = min(width, height)
    for colour_index in colours:
        for _ in range(20):  # placement attempts
            side = int(round(rng.uniform(*settings.object_size) * short))
            side = max(6, min(side, width, height))
            x0 = int(rng.integers(0, width - side + 1))
            y0 = int(rng.integers(0, height - side + 1))
            cls = int(rng.integers(0, len(settings.classes)))
            mask = _shape_mask(
                settings.classes[cls], (x0, y0, x0 + side - 1, y0 + side - 1), (width, height)
            )
            covered = np.bincount(owner[mask], minlength=len(drawn) + 1)[1:]
            left = np.bincount(owner.ravel(), minlength=len(drawn) + 1)[1:] - covered
            if all(left[k] >= settings.min_visible * drawn[k][2] for k in range(len(drawn))):
                break
        else:
            continue  # no placement leaves every earlier object visible enough: skip this one
        colour = PALETTE[int(colour_index)]
        owner[mask] = len(drawn) + 1
        pixels[mask] = colour
        drawn.append((cls, colour, int(mask.sum())))
    objects = [(cls, colour, owner == k + 1) for k, (cls, colour, _) in enumerate(drawn)]
    return pixels, objects


def _save_image(pixels: np.ndarray, path: Path, settings: _Settings) -> None:
    if settings.image_format == "jpg":
        Image.fromarray(pixels).save(path, quality=settings.jpeg_quality)
    else:
        Image.fromarray(pixels).save(path, compress_level=1)


def _annotation(
    ann_id: int, image_id: int, category_id: int, colour: tuple[int, int, int], visible: np.ndarray
) -> dict:
    """The COCO annotation of one object: ``bbox`` tight around its ``visible`` (H, W) mask."""
    rows, cols = np.nonzero(visible.any(axis=1))[0], np.nonzero(visible.any(axis=0))[0]
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(visible.sum()),
        "iscrowd": 0,
        "color": list(colour),
    }


def _render_images(
    image_dir: Path, num_images: int, seed: int, settings: _Settings
) -> tuple[list[dict], list[dict]]:
    """Draw and save every image; returns the COCO ``(images, annotations)`` lists."""
    low, high = settings.image_size
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        rng = np.random.default_rng([seed, image_id])
        width, height = (int(v) for v in rng.integers(low, high + 1, size=2))
        pixels, objects = _draw_image(rng, width, height, settings)
        file_name = f"{image_id:06d}.{settings.image_format}"
        _save_image(pixels, image_dir / file_name, settings)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for cls, colour, visible in objects:
            category = settings.category_ids[cls]
            ann_id = len(annotations) + 1
            annotations.append(_annotation(ann_id, image_id, category, colour, visible))
    return images, annotations


def _write_annotations(
    path: Path, seed: int, images: list[dict], annotations: list[dict], settings: _Settings
) -> None:
    """The COCO instances file (compact JSON, so the same inputs give the same bytes)."""
    categories = [
        {"id": cid, "name": name, "supercategory": "shape"}
        for cid, name in zip(settings.category_ids, settings.classes, strict=True)
    ]
    document = {
        "info": {"description": "samdetr synthetic shapes", "version": "1.0", "seed": seed},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path.write_text(json.dumps(document, separators=(",", ":")) + "\n")


def make_synthetic_coco(
    out_dir: str | Path,
    num_images: int,
    seed: int = 0,
    image_size: tuple[int, int] = (192, 320),
    classes: Sequence[str] = ("square", "disc", "triangle"),
    max_objects: int = 6,
    *,
    category_ids: Sequence[int] | None = None,
    object_size: tuple[float, float] = (0.12, 0.4),
    min_visible: float = 0.6,
    image_format: str = "jpg",
    jpeg_quality: int = 92,
) -> dict:
    """Write a synthetic COCO detection dataset and return a summary.

    Args:
        out_dir: folder to create (or reuse); gets ``images/`` and ``annotations.json``.
        num_images: number of images (ids 1..num_images, files ``000001.jpg``, ...).
        seed: everything is derived from it (image ``i`` uses ``numpy`` seed ``[seed, i]``).
        image_size: ``(min, max)`` side length in pixels; width and height are drawn
            independently and uniformly from it.
        classes: shape names from :data:`SHAPES`, one category each.
        max_objects: 1..max_objects shapes per image (at most ``len(PALETTE)``).
        category_ids: ids of ``classes`` (default :func:`default_category_ids`: 1, 3, 7, ...).
        object_size: ``(min, max)`` shape side as a fraction of the image's shorter side.
        min_visible: fraction of each shape's pixels that must stay visible under later shapes.
        image_format: ``"jpg"`` (realistic, lossy) or ``"png"`` (pixel-exact colours).

    Returns:
        ``{"annotation_file", "image_dir", "num_images", "num_annotations", "categories"
        ({id: name}), "num_classes" (max id + 1)}``.
    """
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    classes = tuple(classes)
    ids = category_ids if category_ids is not None else default_category_ids(len(classes))
    settings = _Settings(
        image_size=image_size, classes=classes, category_ids=tuple(ids),
        max_objects=max_objects, object_size=object_size, min_visible=min_visible,
        image_format=image_format, jpeg_quality=jpeg_quality,
    )  # fmt: skip

    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = _render_images(image_dir, int(num_images), seed, settings)
    annotation_file = out_dir / "annotations.json"
    _write_annotations(annotation_file, seed, images, annotations, settings)
    return {
        "annotation_file": str(annotation_file),
        "image_dir": str(image_dir),
        "num_images": len(images),
        "num_annotations": len(annotations),
        "categories": dict(zip(settings.category_ids, classes, strict=True)),
        "num_classes": max(settings.category_ids) + 1,
    }


def write_synthetic_shards(
    data_dir: str | Path, shard_dir: str | Path, num_images: int, seed: int = 0,
    split: str = "train", **options,
) -> dict:
    """A synthetic data set (:func:`make_synthetic_coco` into ``data_dir``, ``options`` passed
    on) written as a shard set into ``shard_dir`` in this process, without Ray; returns the
    manifest. For tests and benchmarks; ``pipelines.preprocess`` is the parallel route."""
    from samdetr.data.coco_rows import local_reader
    from samdetr.data.coco_source import load_annotations
    from samdetr.data.shard_writer import ShardSetOptions, write_shard_set
    from samdetr.data.storage import resolve_fs

    data_dir = Path(data_dir)
    make_synthetic_coco(data_dir, num_images, seed=seed, **options)
    fs, out = resolve_fs(shard_dir, None)
    return write_shard_set(
        load_annotations(data_dir / "annotations.json"),
        local_reader(data_dir / "images"),
        lambda name: (data_dir / "images" / name).stat().st_size,
        out, fs, ShardSetOptions(split=split),
    )
