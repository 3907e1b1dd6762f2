"""The synthetic COCO dataset generator (samdetr.data.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from samdetr.data.synthetic import SHAPES, make_synthetic_coco


@pytest.fixture(scope="module")
def png_dataset(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("synthetic_png")
    return make_synthetic_coco(out, 24, seed=5, image_size=(96, 200), image_format="png")


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_identical_files_and_other_seed_differs(tmp_path):
    kwargs = {"num_images": 8, "image_size": (64, 128), "max_objects": 5}
    first = make_synthetic_coco(tmp_path / "a", seed=1, **kwargs)
    second = make_synthetic_coco(tmp_path / "b", seed=1, **kwargs)
    other = make_synthetic_coco(tmp_path / "c", seed=2, **kwargs)
    assert first["num_annotations"] == second["num_annotations"]
    annotations = Path(first["annotation_file"]).read_bytes()
    assert annotations == Path(second["annotation_file"]).read_bytes()
    assert annotations != Path(other["annotation_file"]).read_bytes()
    assert files(tmp_path / "a" / "images") == files(tmp_path / "b" / "images")
    assert files(tmp_path / "a" / "images") != files(tmp_path / "c" / "images")


def test_valid_coco_with_non_contiguous_categories(png_dataset):
    coco = COCO(png_dataset["annotation_file"])
    assert sorted(coco.getCatIds()) == [1, 3, 7]
    assert png_dataset["categories"] == {1: "square", 3: "disc", 7: "triangle"}
    assert png_dataset["num_classes"] == 8
    assert len(coco.getImgIds()) == png_dataset["num_images"] == 24
    assert len(coco.getAnnIds()) == png_dataset["num_annotations"] >= 24  # >= 1 per image
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        path = Path(png_dataset["image_dir"]) / info["file_name"]
        with Image.open(path) as image:
            assert image.size == (info["width"], info["height"])
            assert 96 <= image.width <= 200 and 96 <= image.height <= 200
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= info["width"] and y + h <= info["height"]
            assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0
            assert ann["category_id"] in (1, 3, 7)
    used = {ann["category_id"] for ann in coco.dataset["annotations"]}
    assert used == {1, 3, 7}


def test_objects_are_where_their_boxes_say(png_dataset):
    coco = COCO(png_dataset["annotation_file"])
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        pixels = np.asarray(Image.open(Path(png_dataset["image_dir"]) / info["file_name"]))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            mask = (pixels == np.array(ann["color"], dtype=np.uint8)).all(axis=-1)
            ys, xs = np.nonzero(mask)
            found = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert found == ann["bbox"]  # PNG: pixel-exact, tight around the visible shape
            assert mask.sum() == ann["area"]


def test_jpeg_objects_match_boxes(tmp_path):
    summary = make_synthetic_coco(tmp_path, 10, seed=9, image_size=(128, 160))
    document = json.loads(Path(summary["annotation_file"]).read_text())
    by_id = {image["id"]: image for image in document["images"]}
    for ann in document["annotations"]:
        image = by_id[ann["image_id"]]
        assert image["file_name"].endswith(".jpg")
        pixels = np.asarray(Image.open(Path(summary["image_dir"]) / image["file_name"]))
        close = np.abs(pixels.astype(int) - ann["color"]).max(axis=-1) <= 40
        ys, xs = np.nonzero(close)
        found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        x, y, w, h = ann["bbox"]
        # JPEG blurs thin parts (a triangle's apex): the colour stays inside the box (2 px of
        # ringing allowed) and fills most of it
        assert found[0] >= x - 2 and found[1] >= y - 2
        assert found[2] <= x + w + 2 and found[3] <= y + h + 2
        assert (found[2] - found[0]) * (found[3] - found[1]) >= 0.4 * w * h
        assert close.sum() >= 0.5 * ann["area"]


def test_all_shapes_and_custom_ids(tmp_path):
    summary = make_synthetic_coco(
        tmp_path, 12, seed=0, image_size=(64, 96), classes=SHAPES, category_ids=[2, 4, 6, 8, 90]
    )
    assert summary["num_classes"] == 91 and len(summary["categories"]) == len(SHAPES)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_images": 0}, ValueError),
        ({"classes": ("hexagon",)}, ValueError),
        ({"classes": ("disc", "disc")}, ValueError),
        ({"image_size": (200, 100)}, ValueError),
        ({"max_objects": 0}, ValueError),
        ({"max_objects": 7}, ValueError),
        ({"category_ids": [1, 1, 2]}, ValueError),
        ({"image_format": "gif"}, ValueError),
        ({"seed": 1.5}, TypeError),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error):
    arguments = {"num_images": 2, "seed": 0, **kwargs}
    with pytest.raises(error):
        make_synthetic_coco(tmp_path, **arguments)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": (8, 20)}, "16 <= min <= max"),
        ({"classes": ()}, "classes must be distinct names"),
        ({"category_ids": [1, 2]}, "category_ids must be 3 distinct ids >= 1"),
        ({"category_ids": [0, 1, 2]}, "category_ids must be 3 distinct ids >= 1"),
        ({"object_size": (0.5, 0.2)}, "object_size must be"),
        ({"min_visible": 0.0}, r"min_visible must be in \(0, 1\]"),
    ],
)
def test_bad_settings_say_what_is_wrong(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_coco(tmp_path, 2, **kwargs)
    assert not (tmp_path / "annotations.json").exists()


def test_synthetic_shards_round_trip(tmp_path):
    from samdetr.data.shards import ShardDataset, verify_shards
    from samdetr.data.synthetic import write_synthetic_shards

    manifest = write_synthetic_shards(tmp_path / "data", tmp_path / "shards", 5, seed=3,
                                      split="val", max_objects=2)
    assert manifest["split"] == "val" and manifest["num_rows"] == 5 and not manifest["rejects"]
    verify_shards(manifest, shard_dir=tmp_path / "shards")
    document = json.loads((tmp_path / "data" / "annotations.json").read_text())
    rows = ShardDataset(tmp_path / "shards")
    assert sorted(rows[i]["image_id"] for i in range(len(rows))) == sorted(
        i["id"] for i in document["images"]
    )
