"""Parquet shards, manifest and ShardDataset (samdetr.data.shards) on coco128-dev."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samdetr.data.coco_rows import encode_row, local_reader
from samdetr.data.coco_source import load_annotations
from samdetr.data.row_schema import ROW_SCHEMA, rows_to_table
from samdetr.data.shard_writer import plan_shards, shard_file_name, write_shard
from samdetr.data.shards import (
    MANIFEST_NAME,
    ManifestContents,
    ShardDataset,
    clear_manifest,
    iter_rows,
    read_manifest,
    verify_shards,
    write_manifest,
)


@pytest.fixture(scope="module")
def coco_rows(coco128_dir: Path):
    source = load_annotations(coco128_dir / "annotations.json")
    read = local_reader(coco128_dir / "images")
    rows = [encode_row(info, anns, read, source.category_ids)[0] for info, anns in source.items()]
    return source, rows


def _write_set(out: Path, source, rows, target_bytes: int) -> dict:
    """What a pipeline does: plan, write every shard, then the manifest last."""
    clear_manifest(out)
    plan = plan_shards([len(r["image"]) for r in rows], target_bytes)
    entries = []
    for i, idx in enumerate(plan):
        table = rows_to_table([rows[j] for j in idx])
        entries.append(write_shard(table, out / shard_file_name("train", i, len(plan))))
    rejects = [{"kind": "box", "image_id": 5, "annotation_id": 9, "file_name": None,
                "reason": "degenerate_box"}]  # fmt: skip
    contents = ManifestContents(
        split="train", shards=entries, categories=source.categories,
        num_classes=source.num_classes, source_sha256=source.source_sha256,
        config={"target_bytes": target_bytes}, rejects=rejects, counters={"clipped_boxes": 0},
        created_at="2024-01-01T00:00:00+00:00",
    )  # fmt: skip
    return write_manifest(out, contents)


@pytest.fixture(scope="module")
def shard_set(coco_rows, tmp_path_factory):
    source, rows = coco_rows
    out = tmp_path_factory.mktemp("shards")
    return out, _write_set(out, source, rows, target_bytes=6 * 2**20)


def test_round_trip_is_exact(coco_rows, shard_set, coco128_dir: Path):
    source, _ = coco_rows
    out, manifest = shard_set
    assert len(manifest["shards"]) > 1
    back = list(iter_rows(read_manifest(out)))
    assert [r["image_id"] for r in back] == [i["id"] for i in source.images]
    for row, (info, anns) in zip(back, source.items(), strict=True):
        assert row["file_name"] == info["file_name"]
        assert (row["width"], row["height"]) == (info["width"], info["height"])
        assert row["image"] == (coco128_dir / "images" / info["file_name"]).read_bytes()
        np.testing.assert_array_equal(
            np.asarray(row["boxes"], np.float32).reshape(-1, 4),
            np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4),
        )
        assert row["category_ids"] == [a["category_id"] for a in anns]
        assert row["iscrowd"] == [a["iscrowd"] for a in anns]
        assert row["annotation_ids"] == [a["id"] for a in anns]
        np.testing.assert_array_equal(
            np.asarray(row["area"], np.float32), np.asarray([a["area"] for a in anns], np.float32)
        )
    for entry in manifest["shards"]:
        pf = pq.ParquetFile(out / entry["file"])
        assert pf.schema_arrow.equals(ROW_SCHEMA)  # plain Arrow types, read back unchanged
        col = pf.metadata.row_group(0).column(ROW_SCHEMA.names.index("image"))
        assert col.compression == "UNCOMPRESSED"


def test_manifest_round_trip(shard_set, coco_rows):
    source, _ = coco_rows
    out, written = shard_set
    manifest = read_manifest(out)
    assert manifest == written
    stored = json.loads((out / MANIFEST_NAME).read_text())
    assert "root" not in stored
    assert manifest["num_rows"] == 128 and manifest["num_boxes"] == 933
    assert manifest["num_classes"] == 91 and manifest["categories"] == source.categories
    assert manifest["source_sha256"] == source.source_sha256
    assert manifest["rejects"][0]["reason"] == "degenerate_box"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_NAME] + [s["file"] for s in manifest["shards"]]
    )  # no temp files left
    verify_shards(manifest)
    verify_shards(read_manifest(str(out), fs=pafs.LocalFileSystem()))


def test_rewrite_is_deterministic(coco_rows, shard_set, tmp_path: Path):
    source, rows = coco_rows
    out, manifest = shard_set
    again = _write_set(tmp_path, source, rows, target_bytes=6 * 2**20)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]
    assert (tmp_path / MANIFEST_NAME).read_bytes() == (out / MANIFEST_NAME).read_bytes()


def test_missing_manifest_and_modified_shard(shard_set, tmp_path: Path):
    out, manifest = shard_set
    for entry in manifest["shards"]:
        (tmp_path / entry["file"]).write_bytes((out / entry["file"]).read_bytes())
    with pytest.raises(ValueError, match="no manifest: the shard set is incomplete"):
        read_manifest(tmp_path)
    with pytest.raises(ValueError, match="no manifest"):
        ShardDataset(tmp_path)
    (tmp_path / MANIFEST_NAME).write_bytes((out / MANIFEST_NAME).read_bytes())
    verify_shards(read_manifest(tmp_path))
    first = tmp_path / manifest["shards"][0]["file"]
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 differs"):
        verify_shards(read_manifest(tmp_path))
    first.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="bytes, manifest says"):
        verify_shards(read_manifest(tmp_path))
    assert clear_manifest(tmp_path) and not clear_manifest(tmp_path)
    with pytest.raises(ValueError, match="no manifest"):
        read_manifest(tmp_path)


def test_shard_dataset_random_access(shard_set, coco_rows):
    _, rows = coco_rows
    out, _ = shard_set
    ds = ShardDataset(out, cache_row_groups=2)
    assert len(ds) == 128
    for i in [0, 127, 5, 64, 3, -1, np.int64(17)]:
        got, want = ds[i], rows[int(i)]
        assert got["image_id"] == want["image_id"] and got["image"] == want["image"]
        assert got["boxes"] == want["boxes"]
    with pytest.raises(IndexError):
        ds[128]

    def transform(row):
        return torch.tensor(len(row["image"])), {"labels": torch.tensor(row["category_ids"])}

    loader = torch.utils.data.DataLoader(
        ShardDataset(str(out), transform=transform), batch_size=None, num_workers=0
    )
    first = next(iter(loader))
    assert first[0].item() == len(rows[0]["image"])
    assert first[1]["labels"].tolist() == rows[0]["category_ids"]


def test_plan_shards_examples_and_errors():
    assert plan_shards([], 10) == []
    assert plan_shards([4, 4, 4, 4], 8) == [[0, 1], [2, 3]]
    assert plan_shards([3, 20, 3], 8) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="target_bytes"):
        plan_shards([1], 0)
    with pytest.raises(ValueError, match="row_sizes"):
        plan_shards([1, -2], 10)


@given(st.lists(st.integers(0, 100), max_size=60), st.integers(1, 300))
def test_plan_shards_properties(sizes, target):
    plan = plan_shards(sizes, target)
    assert plan == plan_shards(list(sizes), target)  # deterministic
    assert [i for shard in plan for i in shard] == list(range(len(sizes)))  # all, in order
    for shard in plan:
        total = sum(sizes[i] for i in shard)
        assert shard and (total <= target or len(shard) == 1)
    for a, b in zip(plan, plan[1:], strict=False):  # greedy: the next row did not fit
        assert sum(sizes[i] for i in a) + sizes[b[0]] > target


def test_write_shard_and_manifest_validation(tmp_path: Path):
    empty = write_shard(rows_to_table([]), tmp_path / "e.parquet")
    assert empty["rows"] == 0 and empty["boxes"] == 0
    assert pq.read_table(tmp_path / "e.parquet").schema.equals(ROW_SCHEMA)
    with pytest.raises(ValueError, match="ROW_SCHEMA"):
        write_shard(rows_to_table([]).drop_columns(["mode"]), tmp_path / "x.parquet")
    with pytest.raises(TypeError, match="JSON"):
        write_manifest(tmp_path, _contents(shards=[empty], config={"bad": object()}))
    with pytest.raises(TypeError, match="ManifestContents"):
        write_manifest(tmp_path, {"split": "val"})
    assert not (tmp_path / MANIFEST_NAME).exists()
    with pytest.raises(ValueError, match="split"):
        shard_file_name("a/b", 0, 1)


_SHARD = {"file": "e.parquet", "rows": 0, "boxes": 0, "bytes": 1, "sha256": "0"}


def _contents(**changes) -> ManifestContents:
    fields = dict(split="val", shards=[_SHARD], num_classes=2, source_sha256="0", config={},
                  categories=[{"id": 1, "name": "a", "supercategory": "b"}], rejects=[],
                  counters={})  # fmt: skip
    return ManifestContents(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"split": ""}, ValueError, "split must be a non-empty string"),
        ({"shards": [{"file": "e.parquet"}]}, ValueError, r"shards\[0\] lacks"),
        ({"shards": [_SHARD, _SHARD]}, ValueError, "duplicate shard file names"),
        ({"num_classes": 1}, ValueError, "must exceed the largest category id"),
        ({"num_classes": 2.0}, TypeError, "num_classes must be an int"),
        ({"num_classes": True}, TypeError, "num_classes must be an int"),
        ({"source_sha256": None}, TypeError, "source_sha256 must be a str"),
        ({"config": [("a", 1)]}, TypeError, "config must be a Mapping"),
        ({"counters": None}, TypeError, "counters must be a Mapping"),
        ({"created_at": 2024}, TypeError, "created_at must be an ISO-8601 string"),
    ],
)
def test_manifest_contents_validation(changes, error, message):
    with pytest.raises(error, match=message):
        _contents(**changes)


def test_manifest_contents_keeps_only_shard_keys(tmp_path: Path):
    entry = {"file": "a.parquet", "rows": 2, "boxes": 3, "bytes": 10, "sha256": "x", "extra": 1}
    manifest = write_manifest(tmp_path, _contents(shards=[entry], created_at="T"))
    assert manifest["shards"] == [{k: v for k, v in entry.items() if k != "extra"}]
    assert (manifest["num_rows"], manifest["num_boxes"], manifest["created_at"]) == (2, 3, "T")
    assert read_manifest(tmp_path) == manifest
