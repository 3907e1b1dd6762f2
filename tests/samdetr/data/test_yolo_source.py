"""A YOLO dataset read into a CocoSource: boxes in pixels, negative images, every bad-label case
as a reject, EXIF-oriented sizes, and the same shards as the same labels written as COCO JSON."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from samdetr.data.coco_rows import local_reader, reason_code
from samdetr.data.coco_source import load_annotations
from samdetr.data.shard_writer import ShardSetOptions, write_shard_set
from samdetr.data.shards import iter_rows, read_manifest
from samdetr.data.storage import resolve_fs
from samdetr.data.yolo_source import label_path, load_yolo


def _image(path: Path, size: tuple[int, int], orientation: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (120, 30, 200))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if path.suffix == ".png" else "JPEG", exif=exif)
    path.write_bytes(buffer.getvalue())


def _labels(root: Path, name: str, text: str) -> None:
    path = root / "labels" / "train" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _dataset(root: Path, yaml_text: str = "path: .\ntrain: images/train\nnames: [cat, dog]\n"):
    _image(root / "images/train/a.jpg", (40, 30))
    _image(root / "images/train/b.png", (20, 20))
    _image(root / "images/train/sub/c.jpg", (16, 24))
    _labels(root, "a.txt", "0 0.5 0.5 0.5 0.5\n\n1 0.25 0.5 0.1 0.2\n")
    _labels(root, "b.txt", "")  # a negative image; c.jpg has no label file: negative too
    (root / "data.yaml").write_text(yaml_text)
    return root / "data.yaml"


def test_boxes_in_pixels_and_negative_images(tmp_path):
    source, images_dir = load_yolo(_dataset(tmp_path), "train")
    assert images_dir == str(tmp_path)
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in source.images] == [
        (1, "images/train/a.jpg", 40, 30), (2, "images/train/b.png", 20, 20),
        (3, "images/train/sub/c.jpg", 16, 24)]
    boxes = [(a["category_id"], a["bbox"]) for a in source.annotations[1]]
    assert boxes == [(0, pytest.approx([10, 7.5, 20, 15])), (1, pytest.approx([8, 12, 4, 6]))]
    assert 2 not in source.annotations and 3 not in source.annotations
    assert source.categories == [{"id": 0, "name": "cat", "supercategory": ""},
                                 {"id": 1, "name": "dog", "supercategory": ""}]
    assert source.num_classes == 2 and source.rejects == []


def test_every_bad_label_is_a_reject_with_its_reason(tmp_path):
    yaml_path = _dataset(tmp_path)
    _labels(tmp_path, "a.txt", "\n".join([
        "0 0.5 0.5 0.5 0.5",        # kept
        "5 0.5 0.5 0.1 0.1",        # class index the YAML does not name
        "0 1.2 0.5 0.1 0.1",        # not normalised
        "0 0.5 0.5",                # too few values
        "cat 0.5 0.5 0.1 0.1",      # not numbers
        "0.5 0.5 0.5 0.1 0.1",      # a fractional class
        "1 0.5 0.5 0.0 0.2",        # degenerate: found by the COCO path when shards are made
    ]))
    _labels(tmp_path, "gone.txt", "0 0.5 0.5 0.1 0.1\n")  # its image is missing
    source, _ = load_yolo(yaml_path, "train")
    found = [(r["kind"], r["file_name"], reason_code(r)) for r in source.rejects]
    assert found == [("box", "images/train/a.jpg", "unknown_category"),
                     ("box", "images/train/a.jpg", "invalid_box"),
                     ("box", "images/train/a.jpg", "invalid_box"),
                     ("box", "images/train/a.jpg", "invalid_box"),
                     ("box", "images/train/a.jpg", "invalid_box"),
                     ("image", "labels/train/gone.txt", "missing_image")]
    assert "line 2" in source.rejects[0]["reason"] and "names 2 classes" in \
        source.rejects[0]["reason"]
    assert "not normalised" in source.rejects[1]["reason"]
    assert len(source.annotations[1]) == 2  # the kept box and the degenerate one


def test_a_listed_image_that_is_missing_or_unreadable_is_rejected(tmp_path):
    yaml_path = _dataset(tmp_path, "train: train.txt\nnames: {0: cat, 1: dog}\n")
    (tmp_path / "images/train/bad.jpg").write_bytes(b"not an image")
    (tmp_path / "train.txt").write_text("images/train/a.jpg\nimages/train/nope.jpg\n"
                                        "images/train/bad.jpg\n")
    source, _ = load_yolo(yaml_path, "train")
    assert [i["file_name"] for i in source.images] == ["images/train/a.jpg"]
    reasons = {r["file_name"]: reason_code(r) for r in source.rejects}
    assert reasons == {"images/train/bad.jpg": "unreadable_image",
                       "images/train/nope.jpg": "missing_image"}


def test_the_size_is_the_exif_oriented_one(tmp_path):
    yaml_path = _dataset(tmp_path)
    _image(tmp_path / "images/train/rotated.jpg", (40, 30), orientation=6)
    source, _ = load_yolo(yaml_path, "train")
    rotated = next(i for i in source.images if i["file_name"].endswith("rotated.jpg"))
    assert (rotated["width"], rotated["height"]) == (30, 40)


@pytest.mark.parametrize(("text", "message"), [
    ("train: images/train\n", "'names' must list the class names"),
    ("train: images/train\nnames: {0: a, 2: b}\n", "number the classes 0 .. K-1"),
    ("train: images/train\nnc: 3\nnames: [a, b]\n", "nc is 3 but 'names' has 2"),
    ("val: images/val\nnames: [a]\n", "no 'train' split"),
    ("train: images/elsewhere\nnames: [a]\n", "does not exist"),
    ("- just\n- a list\n", "expected a YOLO dataset YAML"),
    ("train: [unclosed\n", "not a valid YAML file"),
])
def test_a_bad_dataset_yaml_is_refused(tmp_path, text, message):
    _dataset(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_yolo(tmp_path / "bad.yaml", "train")


def test_label_paths_follow_the_last_images_folder():
    assert label_path("/d/images/train/x.jpg") == "/d/labels/train/x.txt"
    assert label_path("/images/d/images/a/b.png") == "/images/d/labels/a/b.txt"
    assert label_path("/d/pics/x.jpeg") == "/d/pics/x.txt"


def _rows(shard_dir: Path) -> list[dict]:
    manifest = read_manifest(str(shard_dir))
    return list(iter_rows(manifest, shard_dir=str(shard_dir)))


def test_the_same_labels_as_coco_json_give_the_same_shards(tmp_path):
    root = tmp_path / "yolo"
    source, images_dir = load_yolo(_dataset(root), "train")
    # The same labels written as a COCO file, file names relative to the same folder.
    document = {"images": source.images, "categories": source.categories,
                "annotations": [a for i in sorted(source.annotations)
                                for a in source.annotations[i]]}
    (tmp_path / "coco.json").write_text(json.dumps(document))
    written = {}
    for name, src in (("yolo", source), ("coco", load_annotations(tmp_path / "coco.json"))):
        fs, out = resolve_fs(str(tmp_path / f"shards-{name}"), None)
        write_shard_set(src, local_reader(Path(images_dir)),
                        lambda f: (Path(images_dir) / f).stat().st_size, out, fs,
                        ShardSetOptions(split="train"))
        written[name] = _rows(tmp_path / f"shards-{name}")
    assert len(written["yolo"]) == 3
    for ours, theirs in zip(written["yolo"], written["coco"], strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key] == theirs[key], key
    manifests = [read_manifest(str(tmp_path / f"shards-{n}")) for n in ("yolo", "coco")]
    assert manifests[0]["categories"] == manifests[1]["categories"]
