"""Parquet shards of :data:`samdetr.data.row_schema.ROW_SCHEMA` rows, their manifest, and a Dataset.

A shard set is a folder (local path or URI such as ``s3://bucket/coco/train``) holding
``<split>-00000-of-00042.parquet`` ... and ``manifest.json``. The manifest is written LAST
(locally: temp file + rename), so a folder without it is incomplete; :func:`clear_manifest`
removes it before shards are rewritten. Manifest keys (``schema_version`` 1)::

    schema_version, format ("samdetr-coco-parquet"), split, created_at (ISO-8601 UTC),
    num_rows, num_boxes, num_classes (K = max category id + 1),
    categories [{id, name, supercategory}], columns (ROW_SCHEMA column names),
    shards [{file, rows, boxes, bytes, sha256}],  # file relative to the folder
    source_sha256, config (plain dict), rejects [reject dicts, see samdetr.data.coco_rows],
    counters {name: int},
    selection (null, or what was taken of the source before the shards were cut: the class
               map and the split part applied, with their counts; see samdetr.data.class_map
               and samdetr.data.source_split)

:class:`ManifestContents` is what a writer supplies; the counts, columns and format are derived.
The shard files themselves are planned and written by :mod:`samdetr.data.shard_writer`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from numbers import Integral
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from torch.utils.data import Dataset

from samdetr.data.row_schema import ROW_COLUMNS
from samdetr.data.storage import is_local, resolve_fs

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "ManifestContents",
    "ShardDataset",
    "clear_manifest",
    "iter_rows",
    "manifest_checksum",
    "read_manifest",
    "verify_shards",
    "write_atomic",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
FORMAT_NAME = "samdetr-coco-parquet"
# The keys of a manifest's shard entry (what ``shard_writer.write_shard`` returns).
_SHARD_KEYS = ("file", "rows", "boxes", "bytes", "sha256")


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if base else name


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path``; atomically (temp + rename) on a local filesystem.

    On an object store a single upload is already all-or-nothing, and no folder is needed.
    """
    if not is_local(fs):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


def clear_manifest(shard_dir: str | os.PathLike[str], fs: pafs.FileSystem | None = None) -> bool:
    """Delete ``manifest.json`` (call before (re)writing shards); True if one existed."""
    fs, base = resolve_fs(shard_dir, fs)
    path = _join(base, MANIFEST_NAME)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    fs.delete_file(path)
    return True


@dataclass(frozen=True)
class ManifestContents:
    """What a shard set's manifest records; the rest (counts, columns, format) is derived.

    ``split``: the set's name. ``shards``: ``write_shard`` entries ``{file, rows, boxes, bytes,
    sha256}`` in order (other keys are dropped). ``categories``: ``[{id, name,
    supercategory}]``; ``num_classes``: K, larger than every category id. ``source_sha256``:
    of the annotation file. ``config``: the run's settings; ``rejects``: reject dicts;
    ``counters``: ``{name: int}`` (all three JSON-serialisable). ``created_at``: ISO-8601 UTC,
    None for the time of writing. ``selection``: None, or a JSON-serialisable record of the
    class map and split part applied to the source (what :attr:`source_sha256` hashes is the
    whole input, so this says which part of it the shards hold).
    """

    split: str
    shards: Sequence[Mapping[str, Any]]
    categories: Sequence[Mapping[str, Any]]
    num_classes: int
    source_sha256: str
    config: Mapping[str, Any]
    rejects: Sequence[Mapping[str, Any]]
    counters: Mapping[str, int]
    created_at: str | None = None
    selection: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.split or not isinstance(self.split, str):
            raise ValueError(f"split must be a non-empty string, got {self.split!r}")
        _check_shard_entries(self.shards)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, Integral):
            raise TypeError(f"num_classes must be an int, got {self.num_classes!r}")
        cat_ids = [int(c["id"]) for c in self.categories]
        if cat_ids and self.num_classes <= max(cat_ids):
            raise ValueError(f"num_classes {self.num_classes} must exceed the largest category id")
        expected = {"source_sha256": str, "config": Mapping, "counters": Mapping}
        for name, kind in expected.items():
            if not isinstance(getattr(self, name), kind):
                got = type(getattr(self, name)).__name__
                raise TypeError(f"{name} must be a {kind.__name__}, got {got}")
        if self.selection is not None and not isinstance(self.selection, Mapping):
            raise TypeError(f"selection must be a Mapping or None, got {self.selection!r}")
        if self.created_at is not None and not isinstance(self.created_at, str):
            raise TypeError(f"created_at must be an ISO-8601 string or None: {self.created_at!r}")


def _check_shard_entries(shards: Sequence[Mapping[str, Any]]) -> None:
    """ValueError unless every entry has the shard keys and the file names are distinct."""
    for i, shard in enumerate(shards):
        missing = [k for k in _SHARD_KEYS if k not in shard]
        if missing:
            raise ValueError(f"shards[{i}] lacks {missing} (pass write_shard's return values)")
    names = [shard["file"] for shard in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate shard file names: {names}")


def _manifest_dict(contents: ManifestContents) -> dict[str, Any]:
    """The manifest as stored: ``contents`` plus the derived keys, in the documented order."""
    entries = [{k: shard[k] for k in _SHARD_KEYS} for shard in contents.shards]
    created_at = contents.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "schema_version": SCHEMA_VERSION,
        "format": FORMAT_NAME,
        "split": contents.split,
        "created_at": created_at,
        "num_rows": sum(int(e["rows"]) for e in entries),
        "num_boxes": sum(int(e["boxes"]) for e in entries),
        "num_classes": int(contents.num_classes),
        "categories": [dict(c) for c in contents.categories],
        "columns": list(ROW_COLUMNS),
        "shards": entries,
        "source_sha256": contents.source_sha256,
        "config": dict(contents.config),
        "rejects": [dict(r) for r in contents.rejects],
        "counters": {str(k): int(v) for k, v in contents.counters.items()},
        "selection": dict(contents.selection) if contents.selection is not None else None,
    }


def write_manifest(
    shard_dir: str | os.PathLike[str],
    contents: ManifestContents,
    fs: pafs.FileSystem | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json`` (call it LAST, after every shard) and return it.

    The returned dict also has ``"root"`` (``shard_dir`` as given; not stored).
    """
    if not isinstance(contents, ManifestContents):
        raise TypeError(f"contents must be a ManifestContents, got {type(contents).__name__}")
    manifest = _manifest_dict(contents)
    try:
        text = json.dumps(manifest, indent=1, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"manifest is not JSON-serialisable (check config/rejects): {exc}") from exc
    fs, base = resolve_fs(shard_dir, fs)
    write_atomic(fs, _join(base, MANIFEST_NAME), text.encode())
    manifest["root"] = os.fspath(shard_dir)
    return manifest


def manifest_checksum(shard_dir: str | os.PathLike[str], fs: pafs.FileSystem | None = None) -> str:
    """SHA-256 (hex) of the shard set's ``manifest.json`` bytes: it names the shards' own
    checksums, so it identifies the data (registry tags and promotion checks compare it)."""
    rfs, base = resolve_fs(shard_dir, fs)
    try:
        with rfs.open_input_stream(_join(base, MANIFEST_NAME)) as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError as exc:
        raise ValueError(
            f"no manifest in {os.fspath(shard_dir)}: not a complete shard set"
        ) from exc


def read_manifest(
    shard_dir: str | os.PathLike[str], fs: pafs.FileSystem | None = None
) -> dict[str, Any]:
    """Read a shard set's manifest; ValueError if absent (incomplete set) or malformed.

    The result has an extra key ``"root"``: ``shard_dir`` as given (used to find the shards).
    """
    rfs, base = resolve_fs(shard_dir, fs)
    path = _join(base, MANIFEST_NAME)
    try:
        with rfs.open_input_stream(path) as f:
            raw = f.read()
    except FileNotFoundError as exc:
        if rfs.get_file_info(base).type == pafs.FileType.NotFound:
            raise ValueError(
                f"no manifest: {os.fspath(shard_dir)} does not exist, so it holds no shard set"
            ) from exc
        raise ValueError(
            f"no manifest: the shard set is incomplete or still being written ({path} not found)"
        ) from exc
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {manifest.get('schema_version')!r} unsupported "
            f"(this code reads {SCHEMA_VERSION})"
        )
    manifest["root"] = os.fspath(shard_dir)
    return manifest


def _shard_paths(
    manifest: Mapping[str, Any], fs: pafs.FileSystem | None, shard_dir: Any = None
) -> tuple[pafs.FileSystem, list[str]]:
    root = shard_dir if shard_dir is not None else manifest.get("root")
    if root is None:
        raise ValueError("manifest has no 'root'; use read_manifest or pass shard_dir")
    rfs, base = resolve_fs(root, fs)
    return rfs, [_join(base, s["file"]) for s in manifest["shards"]]


def verify_shards(
    manifest: Mapping[str, Any],
    fs: pafs.FileSystem | None = None,
    shard_dir: str | os.PathLike[str] | None = None,
    check_sha256: bool = True,
) -> None:
    """Check every shard exists with the manifest's size (and sha256); ValueError listing all
    problems otherwise. Shards are looked up in ``shard_dir`` or ``manifest["root"]``."""
    rfs, paths = _shard_paths(manifest, fs, shard_dir)
    problems = []
    for entry, path in zip(manifest["shards"], paths, strict=True):
        info = rfs.get_file_info(path)
        if info.type != pafs.FileType.File:
            problems.append(f"{entry['file']}: missing")
            continue
        if info.size != entry["bytes"]:
            problems.append(f"{entry['file']}: {info.size} bytes, manifest says {entry['bytes']}")
            continue
        if check_sha256:
            digest = hashlib.sha256()
            with rfs.open_input_stream(path) as f:
                while chunk := f.read(8 * 2**20):
                    digest.update(chunk)
            if digest.hexdigest() != entry["sha256"]:
                problems.append(f"{entry['file']}: sha256 differs from the manifest")
    if problems:
        raise ValueError("shard verification failed: " + "; ".join(problems))


def iter_rows(
    manifest: Mapping[str, Any],
    fs: pafs.FileSystem | None = None,
    shard_dir: str | os.PathLike[str] | None = None,
    columns: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield every row as a dict of Python values, shard by shard, in stored (image-id) order.

    ``boxes`` come as lists of [x, y, w, h] floats (float32 values), ``image`` as bytes.
    """
    rfs, paths = _shard_paths(manifest, fs, shard_dir)
    for path in paths:
        with rfs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                yield from pf.read_row_group(g, columns=columns).to_pylist()


class ShardDataset(Dataset):
    """Random access over a shard set's rows (index order = manifest order).

    ``ds[i]`` is the row dict (Python types, see :func:`iter_rows`), or ``transform(row)``
    when a transform is given (e.g. decoding + augmentation returning ``(image, target)``).
    Row groups are read lazily and the last ``cache_row_groups`` are kept per process; a
    sampler that visits them in blocks (:class:`samdetr.data.samplers.BlockShuffleSampler` over
    :attr:`row_group_spans`) reads each row group once per epoch. Picklable for workers.
    """

    def __init__(
        self,
        shard_dir_or_uri: str | os.PathLike[str],
        transform: Callable[[dict[str, Any]], Any] | None = None,
        fs: pafs.FileSystem | None = None,
        cache_row_groups: int = 4,
    ) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        if cache_row_groups < 1:
            raise ValueError(f"cache_row_groups must be >= 1, got {cache_row_groups}")
        self.manifest = read_manifest(shard_dir_or_uri, fs)
        self.transform = transform
        self.cache_row_groups = cache_row_groups
        self._fs, self._paths = _shard_paths(self.manifest, fs)
        # (start row, shard, row group) for every row group, from the Parquet footers.
        self._groups: list[tuple[int, int, int]] = []
        start = 0
        for s, (path, entry) in enumerate(zip(self._paths, self.manifest["shards"], strict=True)):
            with self._fs.open_input_file(path) as f:
                meta = pq.ParquetFile(f).metadata
            if meta.num_rows != entry["rows"]:
                raise ValueError(
                    f"{entry['file']}: {meta.num_rows} rows, manifest says {entry['rows']}"
                )
            for g in range(meta.num_row_groups):
                self._groups.append((start, s, g))
                start += meta.row_group(g).num_rows
        self._starts = [g[0] for g in self._groups]
        self._len = start
        self._cache: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return self._len

    @property
    def row_group_spans(self) -> list[tuple[int, int]]:
        """``[(start, stop)]`` row ranges of every row group in index order; tile range(len)."""
        stops = self._starts[1:] + [self._len]  # one extra stop when there is no group
        return list(zip(self._starts, stops, strict=False))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def _row_group(self, k: int) -> list[dict[str, Any]]:
        rows = self._cache.get(k)
        if rows is not None:
            self._cache.move_to_end(k)
            return rows
        _, s, g = self._groups[k]
        with self._fs.open_input_file(self._paths[s]) as f:
            rows = pq.ParquetFile(f).read_row_group(g).to_pylist()
        self._cache[k] = rows
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return rows

    def __getitem__(self, index: int) -> Any:
        if isinstance(index, bool) or not isinstance(index, int):
            try:
                index = int(index)  # numpy / torch integer scalars
            except (TypeError, ValueError):
                raise TypeError(f"index must be an int, got {type(index).__name__}") from None
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"index out of range for {self._len} rows")
        k = bisect.bisect_right(self._starts, index) - 1
        row = dict(self._row_group(k)[index - self._starts[k]])
        return self.transform(row) if self.transform is not None else row
