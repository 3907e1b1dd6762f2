"""COCO -> Parquet shards: the plan that splits a data set into shards, one shard's work and its
Parquet file, and the whole set in one process.

The orchestration (which process encodes which shard) belongs to the caller: the Ray Data
pipeline in ``pipelines/data/shards.py`` runs :func:`build_shard` for every shard in parallel, and
a plain loop works as well. Shards are planned from the image files' sizes before any is read, so
shard contents and names depend only on the input, never on scheduling.

Parquet layout: zstd for the small columns, NO compression (and no dictionary / statistics)
for ``image``: it holds already-compressed JPEG/PNG bytes that zstd cannot shrink. Row groups
hold about ``row_group_bytes`` (16 MiB) so random access reads little.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from samdetr.data.coco_rows import encode_row, merge_counters
from samdetr.data.coco_source import CocoSource
from samdetr.data.row_schema import ROW_SCHEMA, rows_to_table
from samdetr.data.shards import ManifestContents, write_atomic, write_manifest
from samdetr.data.storage import resolve_fs

DEFAULT_TARGET_BYTES = 256 * 2**20
DEFAULT_ROW_GROUP_BYTES = 16 * 2**20


def shard_file_name(split: str, index: int, count: int) -> str:
    """``<split>-<index:05d>-of-<count:05d>.parquet`` (deterministic names)."""
    if not split or "/" in split:
        raise ValueError(f"split must be a non-empty name without '/', got {split!r}")
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def plan_shards(
    row_sizes: Sequence[int], target_bytes: int = DEFAULT_TARGET_BYTES
) -> list[list[int]]:
    """Group row indices (kept in order) into consecutive shards of about ``target_bytes``.

    Greedy: a shard is closed when adding the next row would pass the target, so every shard
    but a single over-sized row stays within it. Deterministic; no empty shards.
    """
    if isinstance(target_bytes, bool) or not isinstance(target_bytes, int) or target_bytes <= 0:
        raise ValueError(f"target_bytes must be a positive int, got {target_bytes!r}")
    shards: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, row_size in enumerate(row_sizes):
        if isinstance(row_size, bool) or not isinstance(row_size, int) or row_size < 0:
            raise ValueError(f"row_sizes[{i}] must be a non-negative int, got {row_size!r}")
        if current and size + row_size > target_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(i)
        size += row_size
    if current:
        shards.append(current)
    return shards


def _leaf_paths(name: str, typ: pa.DataType) -> list[str]:
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return _leaf_paths(f"{name}.list.{typ.value_field.name}", typ.value_type)
    if pa.types.is_struct(typ):
        return [p for f in typ for p in _leaf_paths(f"{name}.{f.name}", f.type)]
    return [name]


def write_shard(
    table: pa.Table,
    path: str | os.PathLike[str],
    fs: pafs.FileSystem | None = None,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
) -> dict[str, Any]:
    """Write ``table`` (exactly ROW_SCHEMA) as one Parquet file.

    Returns ``{"file": base name, "rows", "boxes", "bytes", "sha256"}`` for the manifest.
    The file is built in memory, hashed and written (atomically on a local filesystem).
    """
    if not isinstance(table, pa.Table):
        raise TypeError(f"write_shard expects a pyarrow.Table, got {type(table).__name__}")
    if not table.schema.equals(ROW_SCHEMA):
        raise ValueError(
            f"table schema differs from ROW_SCHEMA (use row_schema.rows_to_table):\n{table.schema}"
        )
    fs, path = resolve_fs(path, fs)
    data = _parquet_bytes(table, row_group_bytes)
    write_atomic(fs, path, data)
    boxes = table.column("category_ids").combine_chunks()
    return {
        "file": path.rsplit("/", 1)[-1],
        "rows": table.num_rows,
        "boxes": len(boxes.values) if table.num_rows else 0,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _parquet_bytes(table: pa.Table, row_group_bytes: int) -> bytes:
    """The Parquet file of ``table``: zstd for the small columns, none for ``image``; row
    groups of about ``row_group_bytes``."""
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    rows_per_group = max(1, min(table.num_rows, row_group_bytes // per_row))
    compression = {p: "zstd" for f in ROW_SCHEMA for p in _leaf_paths(f.name, f.type)}
    compression["image"] = "none"
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=rows_per_group,
        compression=compression,
        use_dictionary=["file_name", "mode"],
        write_statistics=[c for c in compression if c != "image"],
    )
    return sink.getvalue().to_pybytes()


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


@dataclass(frozen=True)
class ShardSetOptions:
    """How :func:`write_shard_set` cuts and records a shard set.

    ``split``: the manifest's split name. ``target_bytes``: encoded image bytes per shard.
    ``config``: recorded in the manifest as the preprocessing settings. ``prefer_exif``: when a
    photo's stored size matches both its raw and its EXIF-rotated size, apply the EXIF
    orientation.
    """

    split: str = "train"
    target_bytes: int = DEFAULT_TARGET_BYTES
    config: Mapping[str, Any] = field(default_factory=dict)
    prefer_exif: bool = True


def write_shard_set(
    source: CocoSource,
    read_bytes: Callable[[str], bytes],
    file_size: Callable[[str], int],
    shard_dir: str,
    fs: pafs.FileSystem,
    options: ShardSetOptions | None = None,
) -> dict[str, Any]:
    """The whole shard set in this process (no Ray): shards, then the manifest; returns it.

    The same plan and shard work as the Ray Data pipeline, one shard after another.
    """
    options = options or ShardSetOptions()
    fs.create_dir(shard_dir, recursive=True)
    tasks = plan_tasks(source, file_size, options.split, options.target_bytes)
    results = [
        build_shard(t, read_bytes, source.category_ids, shard_dir, fs, options.prefer_exif)
        for t in tasks
    ]
    shards, rejects, counters = combine(results, source.rejects)
    contents = ManifestContents(
        split=options.split,
        shards=shards,
        categories=source.categories,
        num_classes=source.num_classes,
        source_sha256=source.source_sha256,
        config=dict(options.config),
        rejects=rejects,
        counters=counters,
    )
    return write_manifest(shard_dir, contents, fs)
