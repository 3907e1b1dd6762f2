"""COCO evaluation on a shard set: ground truth from the shards, detections from a model.

    coco_gt = ground_truth(shard_dir)
    loader = eval_loader(shard_dir, size=800, max_size=1333, batch_size=4)
    metrics = evaluate_detections(coco_gt, predict(model, loader, device))

Training (every epoch, inference spread over workers) and ``pipelines.evaluate`` (one
process) use the same pieces, so a checkpoint scores the same in both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow.fs as pafs
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from samdetr.data.loader import RowDecoder, collate
from samdetr.data.shards import ShardDataset, iter_rows, manifest_checksum, read_manifest
from samdetr.data.transforms import eval_transforms, resized_shape
from samdetr.engine.coco_eval import coco_from_dict

_GT_COLUMNS = ["image_id", "file_name", "width", "height", "boxes", "category_ids", "iscrowd",
               "area"]


def ground_truth(
    shard_dir: str | os.PathLike[str], fs: pafs.FileSystem | None = None
) -> COCO:
    """A pycocotools ``COCO`` index of the shard set's images, boxes and categories.

    Reads only the annotation columns (not the image bytes). Boxes are the stored ``xywh``
    pixels; crowd boxes stay in (COCOeval treats them as "ignore" regions).
    """
    manifest = read_manifest(shard_dir, fs)
    images, annotations = [], []
    for row in iter_rows(manifest, fs, shard_dir, columns=_GT_COLUMNS):
        images.append(
            {"id": row["image_id"], "file_name": row["file_name"], "width": row["width"],
             "height": row["height"]}
        )
        for box, category, crowd, area in zip(
            row["boxes"], row["category_ids"], row["iscrowd"], row["area"], strict=True
        ):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": row["image_id"], "category_id": category,
                 "bbox": [float(v) for v in box], "iscrowd": int(crowd), "area": float(area)}
            )
    categories = [{"id": c["id"], "name": c["name"]} for c in manifest["categories"]]
    return coco_from_dict(
        {"images": images, "annotations": annotations, "categories": categories}
    )


def shape_batches(shapes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Image indices cut into batches of at most ``batch_size`` images of one shape each.

    Images are taken in order; each goes into the open batch of its shape (a new batch when
    there is none or it is full). Batches come in the order of their first image, so the cut
    depends only on the shapes, never on how many processes share the work.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    open_batch: dict[tuple[int, int], list[int]] = {}
    batches: list[list[int]] = []
    for index, shape in enumerate(shapes):
        batch = open_batch.get(shape)
        if batch is None or len(batch) == batch_size:
            batch = open_batch[shape] = []
            batches.append(batch)
        batch.append(index)
    return batches


def eval_shapes(
    shard_dir: str | os.PathLike[str], size: int, max_size: int | None,
    fs: pafs.FileSystem | None = None,
) -> list[tuple[int, int]]:
    """``(width, height)`` of every image of the shard set after the evaluation resize, from
    the stored sizes (no image is decoded)."""
    manifest = read_manifest(shard_dir, fs)
    return [resized_shape(int(row["width"]), int(row["height"]), size, max_size)
            for row in iter_rows(manifest, fs, shard_dir, columns=["width", "height"])]


def eval_loader(
    shard_dir: str | os.PathLike[str],
    size: int = 800,
    max_size: int = 1333,
    batch_size: int = 4,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> DataLoader:
    """Batches of this rank's part of the shard set, resized for evaluation; crowd boxes kept.

    Each batch holds images of one size after resizing (:func:`shape_batches`), so none is
    padded: zero padding changes the backbone's features near the right and bottom edges, and
    an image's detections would depend on which images share its batch. This way every image is
    scored as if alone, as :class:`samdetr.inference.Predictor` (and the registered MLflow model
    built on it) scores it, and the same in one process as spread over the training workers.
    Whole batches are dealt to the ranks (batch ``k`` to rank ``k % world_size``): every image is
    seen exactly once, none dropped.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad eval split: batch_size={batch_size}, rank={rank}/{world_size}")
    decoder = RowDecoder(eval_transforms(size, max_size), drop_crowd=False)
    dataset = ShardDataset(shard_dir, transform=decoder)
    batches = shape_batches(eval_shapes(shard_dir, size, max_size), batch_size)
    return DataLoader(
        dataset, batch_sampler=batches[rank::world_size], collate_fn=collate,
        num_workers=num_workers, persistent_workers=num_workers > 0,
    )


def manifest_summary(shard_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Image count, class count K, categories, manifest checksum of a shard set, and what
    preprocessing selected from its source (the manifest's ``selection``: None, or the class
    map and the split it carved)."""
    manifest = read_manifest(shard_dir)
    return {
        "manifest_sha256": manifest_checksum(shard_dir),
        "images": manifest["num_rows"],
        "num_classes": manifest["num_classes"],
        "categories": [{"id": c["id"], "name": c["name"]} for c in manifest["categories"]],
        "selection": manifest.get("selection"),
    }
