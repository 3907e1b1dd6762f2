"""COCO JSON -> validated rows (samdetr.data.coco_source, samdetr.data.coco_rows) on coco128-dev
and hand-made bad inputs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from samdetr.data.coco_rows import encode_row, local_reader, merge_counters, reason_code
from samdetr.data.coco_source import load_annotations
from samdetr.data.row_schema import ROW_SCHEMA, rows_to_table


@pytest.fixture(scope="module")
def source(coco128_dir: Path):
    return load_annotations(coco128_dir / "annotations.json")


def _save(path: Path, image: Image.Image, fmt: str, **kwargs) -> tuple[int, int]:
    image.save(path, fmt, **kwargs)
    return image.size


def _info(image_id: int, name: str, size: tuple[int, int]) -> dict:
    return {"id": image_id, "file_name": name, "width": size[0], "height": size[1]}


def _ann(aid: int, bbox, image_id: int = 1, category_id: int = 1, **extra) -> dict:
    ann = {"id": aid, "image_id": image_id, "category_id": category_id, "bbox": bbox}
    ann.update({"area": 10.0, "iscrowd": 0} | extra)
    return ann


def test_load_annotations_coco128(source, coco128_dir: Path):
    raw = json.loads((coco128_dir / "annotations.json").read_text())
    assert source.num_classes == 91
    assert source.categories == [
        {"id": c["id"], "name": c["name"], "supercategory": c["supercategory"]}
        for c in sorted(raw["categories"], key=lambda c: c["id"])
    ]
    assert [i["id"] for i in source.images] == sorted(i["id"] for i in raw["images"])
    assert sum(len(v) for v in source.annotations.values()) == len(raw["annotations"])
    for anns in source.annotations.values():
        assert [a["id"] for a in anns] == sorted(a["id"] for a in anns)
    assert source.rejects == []
    assert len(source.source_sha256) == 64


def test_load_annotations_rejects_unknown_refs_and_duplicates(tmp_path: Path):
    data = {
        "images": [_info(1, "a.jpg", (10, 10))],
        "categories": [{"id": 3, "name": "x", "supercategory": "y"}],
        "annotations": [
            _ann(5, [0, 0, 2, 2], category_id=3),
            _ann(2, [0, 0, 2, 2], image_id=99, category_id=3),
            _ann(3, [0, 0, 2, 2], category_id=7),
        ],
    }
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    src = load_annotations(path)
    assert src.num_classes == 4
    assert [(r["annotation_id"], reason_code(r)) for r in src.rejects] == [
        (2, "unknown_image"),
        (3, "unknown_category"),
    ]
    assert [a["id"] for a in src.annotations[1]] == [5]
    with pytest.raises(ValueError, match="strict mode: 2 rejected"):
        load_annotations(path, strict=True)
    for key, dup in (("images", _info(1, "b.jpg", (5, 5))), ("annotations", _ann(5, [0, 0, 1, 1]))):
        bad = json.loads(json.dumps(data))
        bad[key].append(dup)
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="duplicate"):
            load_annotations(path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="annotations"):
        load_annotations(path)


def test_every_coco128_image_and_box_encodes_exactly(source, coco128_dir: Path):
    read = local_reader(coco128_dir / "images")
    rows, totals = [], {}
    for info, anns in source.items():
        row, rejects, counters = encode_row(info, anns, read, source.category_ids)
        assert rejects == [] and row is not None
        merge_counters(totals, counters)
        assert row["image"] == (coco128_dir / "images" / info["file_name"]).read_bytes()
        assert (row["width"], row["height"]) == (info["width"], info["height"])
        assert row["exif_transpose"] is False
        assert row["annotation_ids"] == [a["id"] for a in anns]
        np.testing.assert_array_equal(
            np.asarray(row["boxes"], np.float32).reshape(-1, 4),
            np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4),
        )
        rows.append(row)
    assert totals["images_kept"] == 128 and totals["boxes"] == 933
    assert totals["clipped_boxes"] == 0 and totals["images_rejected"] == 0
    modes = {r["mode"] for r in rows}
    assert modes == {"RGB", "L"}  # coco128 holds one single-channel JPEG
    table = rows_to_table(rows)
    assert table.schema.equals(ROW_SCHEMA) and table.num_rows == 128
    assert table.column("category_ids").combine_chunks().values.type == pa.int32()


def test_rows_to_table_empty_and_bad_rows():
    empty = rows_to_table([])
    assert empty.num_rows == 0 and empty.schema.equals(ROW_SCHEMA)
    with pytest.raises(ValueError, match="missing keys"):
        rows_to_table([{"image_id": 1}])
    with pytest.raises(TypeError):
        rows_to_table({"image_id": 1})


def test_bad_images_are_reported_and_do_not_stop_the_rest(coco128_dir: Path, tmp_path: Path):
    src = coco128_dir / "images" / "000000000009.jpg"
    good = tmp_path / "good.jpg"
    shutil.copy(src, good)
    data = src.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    size = Image.open(src).size
    cats = {1}
    read = local_reader(tmp_path)
    results = {}
    for iid, name in enumerate(["good.jpg", "trunc.jpg", "missing.jpg", "junk.jpg"], start=1):
        results[name] = encode_row(
            _info(iid, name, size), [_ann(iid, [1, 1, 5, 5], iid)], read, cats
        )
    assert results["good.jpg"][0] is not None and results["good.jpg"][1] == []
    expected = {"trunc.jpg": "unreadable_image", "missing.jpg": "missing_image"}
    expected["junk.jpg"] = "unreadable_image"
    for name, code in expected.items():
        row, rejects, counters = results[name]
        assert row is None and counters["images_rejected"] == 1
        assert [(r["kind"], reason_code(r), r["num_annotations"]) for r in rejects] == [
            ("image", code, 1)
        ]
    with pytest.raises(ValueError, match="missing_image"):
        encode_row(_info(9, "missing.jpg", size), [], read, cats, strict=True)
    row, rejects, _ = encode_row(_info(1, "good.jpg", (size[0] + 1, size[1])), [], read, cats)
    assert row is None and rejects[0]["reason"].startswith("size_mismatch: annotation 641x480")


def test_bad_boxes_are_rejected_or_clipped(coco128_dir: Path):
    name = "000000000009.jpg"
    w, h = Image.open(coco128_dir / "images" / name).size
    anns = [
        _ann(1, [10, 10, 20, 30]),
        _ann(2, [10, 10, 0, 5]),
        _ann(3, [10, 10, 5, -1]),
        _ann(4, [w + 5, 10, 5, 5]),
        _ann(5, [-10, h - 20, 30, 40]),
        _ann(6, [1, 2, float("nan"), 4]),
        _ann(7, [1, 2, 3]),
        _ann(8, [1, 2, 3, 4], category_id=42),
    ]
    row, rejects, counters = encode_row(
        _info(1, name, (w, h)), anns, local_reader(coco128_dir / "images"), {1}
    )
    assert row is not None
    assert [(r["annotation_id"], reason_code(r)) for r in rejects] == [
        (2, "degenerate_box"),
        (3, "degenerate_box"),
        (4, "box_outside_image"),
        (6, "invalid_box"),
        (7, "invalid_box"),
        (8, "unknown_category"),
    ]
    assert row["annotation_ids"] == [1, 5]
    assert row["boxes"] == [[10.0, 10.0, 20.0, 30.0], [0.0, h - 20.0, 20.0, 20.0]]
    assert counters["clipped_boxes"] == 1 and counters["boxes_rejected"] == 6
    assert counters["boxes"] == 2


@pytest.mark.parametrize(
    ("mode", "fmt", "expect_mode"),
    [("CMYK", "JPEG", "CMYK"), ("RGBA", "PNG", "RGBA"), ("I;16", "PNG", "I;16"), ("L", "PNG", "L")],
)
def test_unusual_image_modes(tmp_path: Path, mode: str, fmt: str, expect_mode: str):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (24, 40), dtype=np.uint16))
    else:
        channels = len(mode)
        arr = rng.integers(0, 255, (24, 40, channels), dtype=np.uint8)
        image = Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode=mode)
    name = f"img.{fmt.lower()}"
    size = _save(tmp_path / name, image, fmt)
    row, rejects, _ = encode_row(
        _info(7, name, size), [_ann(1, [2, 2, 10, 10], image_id=7)], local_reader(tmp_path), {1}
    )
    assert rejects == [] and row is not None
    assert row["mode"] == expect_mode and row["exif_transpose"] is False
    assert row["image"] == (tmp_path / name).read_bytes()


def _exif_jpeg(path: Path, orientation: int, size=(40, 24)) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", size, (200, 10, 10)).save(path, "JPEG", exif=exif)


def test_exif_rotated_jpeg(tmp_path: Path):
    _exif_jpeg(tmp_path / "rot.jpg", 6)  # stored 40x24, displayed 24x40
    read = local_reader(tmp_path)
    box = [_ann(1, [1, 1, 20, 30])]
    row, rejects, counters = encode_row(_info(1, "rot.jpg", (24, 40)), box, read, {1})
    assert rejects == [] and row["exif_transpose"] is True and counters["exif_transposed"] == 1
    assert (row["width"], row["height"]) == (24, 40)
    # annotated on the raw pixel grid (as COCO 2017 is): no transpose; this box now sticks out
    row, rejects, counters = encode_row(_info(1, "rot.jpg", (40, 24)), box, read, {1})
    assert rejects == [] and row["exif_transpose"] is False and counters["clipped_boxes"] == 1
    row, rejects, _ = encode_row(_info(1, "rot.jpg", (30, 30)), box, read, {1})
    assert row is None and reason_code(rejects[0]) == "size_mismatch"
    # 180 degrees: both sizes match; the choice is explicit and counted
    _exif_jpeg(tmp_path / "r180.jpg", 3)
    for prefer in (True, False):
        row, _, counters = encode_row(
            _info(2, "r180.jpg", (40, 24)), [], read, {1}, prefer_exif=prefer
        )
        assert row["exif_transpose"] is prefer and counters["exif_ambiguous"] == 1


def test_reader_errors_and_types(tmp_path: Path):
    def broken(name: str) -> bytes:
        raise PermissionError("denied")

    row, rejects, _ = encode_row(_info(1, "x.jpg", (4, 4)), [], broken, {1})
    assert row is None and rejects[0]["reason"].startswith("unreadable_image: PermissionError")
    with pytest.raises(TypeError, match="not bytes"):
        encode_row(_info(1, "x.jpg", (4, 4)), [], lambda n: "text", {1})
    with pytest.raises(TypeError, match="callable"):
        encode_row(_info(1, "x.jpg", (4, 4)), [], None, {1})
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    row, rejects, counters = encode_row(
        _info(1, "x.png", (4, 4)), [], lambda n: buf.getvalue(), {1}
    )
    assert rejects == [] and row["boxes"] == [] and counters["images_without_boxes"] == 1
    table = rows_to_table([row])
    assert table.column("boxes").to_pylist() == [[]]


def test_filesystem_reader_and_remote_style_paths(coco128_dir: Path, tmp_path: Path):
    import pyarrow.fs as pafs

    from samdetr.data.coco_rows import filesystem_reader

    fs = pafs.SubTreeFileSystem(str(coco128_dir), pafs.LocalFileSystem())
    src = load_annotations("annotations.json", filesystem=fs)
    assert src.num_classes == 91
    info, anns = next(src.items())
    read = filesystem_reader(fs, "images")
    row, rejects, _ = encode_row(info, anns, read, src.category_ids)
    assert (
        rejects == [] and row["image"] == (coco128_dir / "images" / info["file_name"]).read_bytes()
    )
    _, rejects, _ = encode_row(_info(1, "nope.jpg", (4, 4)), [], read, src.category_ids)
    assert reason_code(rejects[0]) == "missing_image"


def test_rows_to_table_checks_box_shapes():
    row = {
        "image_id": 1, "file_name": "a.jpg", "width": 8, "height": 8, "image": b"x",
        "exif_transpose": False, "mode": "RGB", "boxes": [[1, 2, 3, 4, 5, 6, 7, 8]],
        "category_ids": [1, 2], "iscrowd": [0, 0], "area": [1.0, 1.0], "annotation_ids": [1, 2],
    }  # fmt: skip
    with pytest.raises(ValueError, match="2 x 4"):
        rows_to_table([row])
    row["boxes"] = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float64)
    table = rows_to_table([row])
    assert table.column("boxes").to_pylist() == [[[1, 2, 3, 4], [5, 6, 7, 8]]]
    row["image_id"] = None
    with pytest.raises(ValueError, match="null"):
        rows_to_table([row])
