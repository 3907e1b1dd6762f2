"""COCO -> Parquet shards: the work of one shard, and the plan that splits a data set into shards.

The orchestration (which process encodes which shard) belongs to the caller: the Ray Data
pipeline in ``pipelines/preprocess.py`` runs :func:`build_shard` for every shard in parallel, and
a plain loop works as well. Shards are planned from the image files' sizes before any is read, so
shard contents and names depend only on the input, never on scheduling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from samdetr.data.coco_rows import CocoSource, encode_row, merge_counters
from samdetr.data.row_schema import rows_to_table
from samdetr.data.shards import plan_shards, shard_file_name, write_manifest, write_shard


@dataclass(frozen=True)
class ShardTask:
    """Everything one worker needs to encode and write one shard (picklable)."""

    index: int
    file_name: str
    items: tuple[tuple[dict[str, Any], tuple[dict[str, Any], ...]], ...]  # (image info, anns)


def plan_tasks(
    source: CocoSource, file_size: Callable[[str], int], split: str, target_bytes: int
) -> list[ShardTask]:
    """Group the images (in image-id order) into shards of about ``target_bytes``.

    ``file_size(file_name)`` gives an image's size in bytes (0 when missing: such images are
    rejected later and cost nothing).
    """
    items = list(source.items())
    sizes = [max(int(file_size(info["file_name"])), 0) for info, _ in items]
    groups = plan_shards(sizes, target_bytes) if items else []
    return [
        ShardTask(
            index=i,
            file_name=shard_file_name(split, i, len(groups)),
            items=tuple((items[j][0], tuple(items[j][1])) for j in group),
        )
        for i, group in enumerate(groups)
    ]


def build_shard(
    task: ShardTask,
    read_bytes: Callable[[str], bytes],
    categories: set[int],
    shard_dir: str,
    fs: pafs.FileSystem,
    prefer_exif: bool = True,
) -> dict[str, Any]:
    """Encode the images of ``task`` and write its Parquet file.

    Returns ``{"index", "shard" (write_shard's entry), "rejects", "counters"}``. Bad images and
    boxes become rejects; they never stop the shard.
    """
    rows, rejects, counters = [], [], {}
    for info, anns in task.items:
        row, row_rejects, row_counters = encode_row(
            info, anns, read_bytes, categories, prefer_exif=prefer_exif
        )
        if row is not None:
            rows.append(row)
        rejects.extend(row_rejects)
        merge_counters(counters, row_counters)
    entry = write_shard(rows_to_table(rows), f"{shard_dir.rstrip('/')}/{task.file_name}", fs)
    return {"index": task.index, "shard": entry, "rejects": rejects, "counters": counters}


def combine(
    results: Sequence[Mapping[str, Any]],
    source_rejects: Sequence[Mapping[str, Any]],
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Merge per-shard results in shard order: ``(shard entries, rejects, counters)``."""
    ordered = sorted(results, key=lambda r: r["index"])
    counters: dict[str, int] = {}
    rejects = list(source_rejects)
    for result in ordered:
        merge_counters(counters, result["counters"])
        rejects.extend(result["rejects"])
    return [dict(r["shard"]) for r in ordered], rejects, counters


def write_shard_set(
    source: CocoSource,
    read_bytes: Callable[[str], bytes],
    file_size: Callable[[str], int],
    shard_dir: str,
    fs: pafs.FileSystem,
    split: str = "train",
    target_bytes: int = 256 * 2**20,
    config: Mapping[str, Any] | None = None,
    prefer_exif: bool = True,
) -> dict[str, Any]:
    """The whole shard set in this process (no Ray): shards, then the manifest; returns it.

    The same plan and shard work as the Ray Data pipeline, one shard after another.
    """
    fs.create_dir(shard_dir, recursive=True)
    tasks = plan_tasks(source, file_size, split, target_bytes)
    results = [
        build_shard(t, read_bytes, source.category_ids, shard_dir, fs, prefer_exif) for t in tasks
    ]
    shards, rejects, counters = combine(results, source.rejects)
    return write_manifest(
        shard_dir,
        fs=fs,
        split=split,
        shards=shards,
        categories=source.categories,
        num_classes=source.num_classes,
        source_sha256=source.source_sha256,
        config=dict(config or {}),
        rejects=rejects,
        counters=counters,
    )
