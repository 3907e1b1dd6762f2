"""A Pascal VOC data set read into a CocoSource: the devkit's box convention, difficult objects
as crowd boxes, class ids from a list or from the names found, every bad-annotation case as a
reject, clear errors for a wrong layout, and the same shards as the same labels in COCO JSON."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from samdetr.data.coco_rows import local_reader, reason_code
from samdetr.data.coco_source import load_annotations
from samdetr.data.shard_writer import ShardSetOptions, write_shard_set
from samdetr.data.shards import iter_rows, read_manifest
from samdetr.data.storage import resolve_fs
from samdetr.data.voc_source import load_voc, voc_box


def _image(path: Path, size: tuple[int, int], orientation: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 160, 90)).save(
        buffer, format="PNG" if path.suffix == ".png" else "JPEG", exif=exif)
    path.write_bytes(buffer.getvalue())


def _object(name, box, difficult=None) -> str:
    """An <object>; ``box`` (xmin, ymin, xmax, ymax) as given, None: no <bndbox>."""
    flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    corners = "" if box is None else "<bndbox>" + "".join(
        f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
    ) + "</bndbox>"
    label = "" if name is None else f"<name>{name}</name>"
    return f"<object>{label}<pose>Left</pose><truncated>0</truncated>{flag}{corners}</object>"


def _xml(root: Path, stem: str, objects: list[str], size=None, filename=None) -> None:
    """``Annotations/<stem>.xml``; ``size`` (w, h) or None for no <size>."""
    path = root / "Annotations" / f"{stem}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = "" if size is None else (f"<size><width>{size[0]}</width><height>{size[1]}</height>"
                                     "<depth>3</depth></size>")
    path.write_text(f"<annotation><folder>VOC2012</folder>"
                    f"<filename>{filename or stem + '.jpg'}</filename>{shape}"
                    f"{''.join(objects)}</annotation>")


def _split(root: Path, name: str, ids: list[str]) -> None:
    path = root / "ImageSets" / "Main" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def _dataset(root: Path) -> Path:
    """Three images: two boxes (one difficult), a negative one, and a PNG without <size>."""
    _image(root / "JPEGImages/2008_000001.jpg", (40, 30))
    _image(root / "JPEGImages/2008_000002.jpg", (20, 20))
    _image(root / "JPEGImages/2008_000003.png", (16, 24))
    _xml(root, "2008_000001", [_object("dog", (11, 8, 30, 22)),
                               _object(" cat\n", (1, 1, 40, 30), difficult=1)], size=(40, 30))
    _xml(root, "2008_000002", [], size=(20, 20))
    _xml(root, "2008_000003", [_object("dog", (2.5, 3, 9.5, 10), difficult=0)],
         filename="2008_000003.png")
    _split(root, "train", ["2008_000001", "2008_000002", "2008_000003"])
    _split(root, "val", ["2008_000002"])
    _split(root, "dog_train", ["2008_000001  1"])  # a per-class list: not a split
    return root


def test_boxes_follow_the_devkit_convention_and_difficult_objects_are_crowd(tmp_path):
    source, images_root = load_voc(_dataset(tmp_path), "train")
    assert images_root == str(tmp_path)
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in source.images] == [
        (1, "JPEGImages/2008_000001.jpg", 40, 30), (2, "JPEGImages/2008_000002.jpg", 20, 20),
        (3, "JPEGImages/2008_000003.png", 16, 24)]  # the last size read from the image
    # Classes: the sorted names found (cat before dog); VOC corners 1-based inclusive.
    assert source.categories == [{"id": 0, "name": "cat", "supercategory": ""},
                                 {"id": 1, "name": "dog", "supercategory": ""}]
    found = [(a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"])
             for i in sorted(source.annotations) for a in source.annotations[i]]
    assert found == [(1, 1, [10.0, 7.0, 20.0, 15.0], 300.0, 0),
                     (1, 0, [0.0, 0.0, 40.0, 30.0], 1200.0, 1),  # the whole image, difficult
                     (3, 1, [1.5, 2.0, 8.0, 8.0], 64.0, 0)]
    assert 2 not in source.annotations  # a negative image, kept
    assert source.num_classes == 2 and source.rejects == []
    assert source.path == f"{tmp_path}/ImageSets/Main/train.txt"


def test_classes_given_fix_the_ids_and_reject_other_names(tmp_path):
    root = _dataset(tmp_path)
    source, _ = load_voc(root, "train", classes=["dog", "bird", "cat"])
    assert [c["name"] for c in source.categories] == ["dog", "bird", "cat"]
    assert [a["category_id"] for a in source.annotations[1]] == [0, 2]
    source, _ = load_voc(root, "train", classes=["dog"])
    assert [(r["kind"], r["image_id"], reason_code(r)) for r in source.rejects] == [
        ("box", 1, "unknown_category")]
    assert "'cat' (object 2)" in source.rejects[0]["reason"]
    # The default depends on the data: the val split has no object, so no class at all.
    with pytest.raises(ValueError, match="pass classes"):
        load_voc(root, "val")
    assert load_voc(root, "val", classes=["cat", "dog"])[0].num_classes == 2


def test_every_bad_annotation_is_a_reject_with_its_reason(tmp_path):
    root = _dataset(tmp_path)
    _xml(root, "2008_000001", [
        _object("dog", (11, 8, 30, 22)),        # kept
        _object(None, (1, 1, 5, 5)),            # no name
        _object("dog", ("a", 1, 5, 5)),         # not numbers
        _object("dog", None),                   # no box
        _object("dog", (1, 1, 5, "nan")),       # not finite
        _object("dog", (1, 1, 5, 5), "yes"),    # difficult neither 0 nor 1
        _object("dog", (9, 1, 5, 5)),           # xmax < xmin: the COCO path's degenerate_box
    ], size=(40, 30))
    (root / "Annotations/2008_000002.xml").write_text("<annotation><object></annotation>")
    _image(root / "JPEGImages/2008_000004.jpg", (8, 8))
    (root / "Annotations/2008_000004.xml").write_text("<html></html>")
    (root / "JPEGImages/2008_000003.png").unlink()
    _image(root / "JPEGImages/2008_000005.jpg", (8, 8))  # no XML
    (root / "JPEGImages/2008_000006.jpg").write_bytes(b"not an image")
    _xml(root, "2008_000006", [_object("dog", (1, 1, 4, 4))])  # no size: the image is read
    _split(root, "train", [f"2008_00000{i}" for i in range(1, 7)])
    source, _ = load_voc(root, "train")
    found = [(r["kind"], r["image_id"], r["file_name"], reason_code(r)) for r in source.rejects]
    assert found == [("box", 1, "JPEGImages/2008_000001.jpg", "invalid_box")] * 5 + [
        ("image", 2, "JPEGImages/2008_000002.jpg", "invalid_annotation"),
        ("image", 3, "JPEGImages/2008_000003.png", "missing_image"),
        ("image", 4, "JPEGImages/2008_000004.jpg", "invalid_annotation"),
        ("image", 5, "JPEGImages/2008_000005.jpg", "missing_annotation"),
        ("image", 6, "JPEGImages/2008_000006.jpg", "unreadable_image")]
    reasons = [r["reason"] for r in source.rejects]
    assert "object 2 has no <name>" in reasons[0]
    assert "'xmin': 'a'" in reasons[1] and "'xmin': None" in reasons[2]
    assert "<difficult> 'yes'" in reasons[4]
    assert "not well-formed XML" in reasons[5] and "<html>, not <annotation>" in reasons[7]
    assert "no Annotations/2008_000005.xml" in reasons[8]
    assert source.rejects[6]["num_annotations"] == 1  # the missing image's box goes with it
    assert [i["id"] for i in source.images] == [1]
    assert [a["bbox"] for a in source.annotations[1]] == [[10.0, 7.0, 20.0, 15.0],
                                                          [8.0, 0.0, -3.0, 5.0]]


def test_the_image_is_found_by_id_when_the_xml_names_another_file(tmp_path):
    root = _dataset(tmp_path)
    _image(root / "JPEGImages/x7.JPG", (12, 10))
    _xml(root, "x7", [], size=(12, 10), filename="renamed-by-a-tool.jpg")
    _split(root, "extra", ["x7"])
    source, _ = load_voc(root, "extra", classes=["dog"])
    assert [i["file_name"] for i in source.images] == ["JPEGImages/x7.JPG"]


def test_the_xml_size_is_kept_for_the_coco_path_to_check(tmp_path):
    """An EXIF-rotated photo keeps the size the XML gives; a size that matches no orientation
    of the file is rejected when the shards are made (size_mismatch), as for COCO."""
    root = _dataset(tmp_path)
    _image(root / "JPEGImages/r.jpg", (40, 30), orientation=6)
    _xml(root, "r", [_object("dog", (1, 1, 30, 40))], size=(30, 40))
    _xml(root, "2008_000002", [], size=(21, 20))  # the image is 20 x 20
    _split(root, "train", ["r", "2008_000002"])
    source, images_root = load_voc(root, "train")
    assert [(i["width"], i["height"]) for i in source.images] == [(30, 40), (21, 20)]
    manifest = _write(source, images_root, tmp_path / "shards")
    assert [(r["file_name"], reason_code(r)) for r in manifest["rejects"]] == [
        ("JPEGImages/2008_000002.jpg", "size_mismatch")]
    (row,) = _rows(tmp_path / "shards")
    assert row["exif_transpose"] and (row["width"], row["height"]) == (30, 40)


def test_a_missing_split_or_folder_is_refused_naming_what_exists(tmp_path):
    root = _dataset(tmp_path)
    with pytest.raises(ValueError, match=r"no split 'test'.*the splits there are \['train', "
                                         r"'val'\]"):
        load_voc(root, "test")
    shutil.rmtree(root / "JPEGImages")
    with pytest.raises(ValueError, match="not a VOC data set root: no JPEGImages folder"):
        load_voc(root, "train")


@pytest.mark.parametrize(("lines", "message"), [
    ("a\nb c\n", "line 2: expected one image id"),
    ("a\n\nb\na\n", "line 4: image id 'a' is listed twice"),
])
def test_a_bad_split_file_is_refused_with_its_line(tmp_path, lines, message):
    root = _dataset(tmp_path)
    (root / "ImageSets/Main/train.txt").write_text(lines)
    with pytest.raises(ValueError, match=message):
        load_voc(root, "train")


@pytest.mark.parametrize(("classes", "error", "message"), [
    ("cat,dog", TypeError, "a list of class names"),
    ([], ValueError, "at least one class"),
    (["cat", ""], ValueError, "non-empty names"),
    (["cat", "dog", "cat"], ValueError, r"\['cat'\] more than once"),
])
def test_bad_classes_are_refused(tmp_path, classes, error, message):
    with pytest.raises(error, match=message):
        load_voc(_dataset(tmp_path), "train", classes=classes)


def test_a_uri_root_reads_through_pyarrow(tmp_path):
    by_path, _ = load_voc(_dataset(tmp_path), "train")
    by_uri, images_root = load_voc(f"file://{tmp_path}", "train")
    assert images_root == str(tmp_path)
    assert by_uri.images == by_path.images and by_uri.annotations == by_path.annotations
    assert by_uri.source_sha256 == by_path.source_sha256


_corners = st.integers(min_value=1, max_value=64)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(_corners, _corners, _corners, _corners, st.booleans(),
                          st.sampled_from(["cat", "dog", "person"])), max_size=4))
def test_any_integer_box_converts_as_the_devkit_counts_pixels(objects):
    """w and h are the inclusive pixel counts; the box ends where the last pixel ends."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _image(root / "JPEGImages/a.jpg", (64, 64))
        _xml(root, "a", [_object(n, (x1, y1, x2, y2), int(d)) for x1, y1, x2, y2, d, n in objects],
             size=(64, 64))
        _split(root, "train", ["a"])
        classes = ["cat", "dog", "person"]
        source, _ = load_voc(root, "train", classes=classes)
    found = [(a["category_id"], a["bbox"], a["iscrowd"]) for a in source.annotations.get(1, [])]
    assert found == [(classes.index(n), [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], int(d))
                     for x1, y1, x2, y2, d, n in objects]
    for x1, y1, x2, y2, *_ in objects:
        x, y, w, h = voc_box(x1, y1, x2, y2)
        assert (x + w, y + h) == (x2, y2) and w * h == (x2 - x1 + 1) * (y2 - y1 + 1)


def _write(source, images_root: str, out: Path) -> dict:
    fs, folder = resolve_fs(str(out), None)
    write_shard_set(source, local_reader(Path(images_root)),
                    lambda f: (Path(images_root) / f).stat().st_size, folder, fs,
                    ShardSetOptions(split="train"))
    return read_manifest(str(out))


def _rows(shard_dir: Path) -> list[dict]:
    return list(iter_rows(read_manifest(str(shard_dir)), shard_dir=str(shard_dir)))


def test_the_same_labels_as_coco_json_give_the_same_shards(tmp_path):
    """The COCO file is written by hand (boxes in COCO's convention), the VOC tree from it by
    the devkit's: both give equal rows and categories."""
    coco = {
        "images": [{"id": 1, "file_name": "JPEGImages/p.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "JPEGImages/q.jpg", "width": 24, "height": 32}],
        "categories": [{"id": 0, "name": "bus"}, {"id": 1, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 5, 10, 6], "area": 60,
             "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 0, "bbox": [0, 0, 40, 30], "area": 1200,
             "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 0, "bbox": [7, 3, 2, 20], "area": 40,
             "iscrowd": 0}]}
    voc = tmp_path / "voc"
    names = [c["name"] for c in coco["categories"]]
    for info in coco["images"]:
        _image(voc / info["file_name"], (info["width"], info["height"]))
        objects = [_object(names[a["category_id"]],
                           (a["bbox"][0] + 1, a["bbox"][1] + 1, a["bbox"][0] + a["bbox"][2],
                            a["bbox"][1] + a["bbox"][3]), a["iscrowd"])
                   for a in coco["annotations"] if a["image_id"] == info["id"]]
        _xml(voc, Path(info["file_name"]).stem, objects, size=(info["width"], info["height"]))
    _split(voc, "train", ["p", "q"])
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    source, images_root = load_voc(voc, "train", classes=names)
    manifests = {"voc": _write(source, images_root, tmp_path / "shards-voc"),
                 "coco": _write(load_annotations(tmp_path / "coco.json"), images_root,
                                tmp_path / "shards-coco")}
    ours, theirs = _rows(tmp_path / "shards-voc"), _rows(tmp_path / "shards-coco")
    assert len(ours) == 2 and ours == theirs
    assert manifests["voc"]["categories"] == manifests["coco"]["categories"]
    assert manifests["voc"]["rejects"] == manifests["coco"]["rejects"] == []
