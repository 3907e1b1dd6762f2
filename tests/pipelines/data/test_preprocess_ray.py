"""pipelines.preprocess on a real local Ray: shards, manifest, rejects, strict mode, determinism."""

from __future__ import annotations

import json
import os
import shutil

import pytest

pytest.importorskip("ray")

import ray  # noqa: E402
from support.label_formats import CLASSES, write_coco, write_voc, write_yolo  # noqa: E402

from pipelines.data.shards import (  # noqa: E402
    PreprocessSettings,
    ShardProgress,
    format_summary,
    run_preprocess,
)
from samdetr.data.shards import (  # noqa: E402
    ShardDataset,
    iter_rows,
    read_manifest,
    verify_shards,
)


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture()
def damaged_coco(coco128_dir, tmp_path):
    """A copy of the first 20 coco128 images with a truncated JPEG, a missing file and bad boxes."""
    data = json.loads((coco128_dir / "annotations.json").read_text())
    images = sorted(data["images"], key=lambda i: i["id"])[:20]
    keep = {i["id"] for i in images}
    anns = [a for a in data["annotations"] if a["image_id"] in keep]
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for info in images:
        shutil.copy(coco128_dir / "images" / info["file_name"], image_dir / info["file_name"])
    truncated, missing = images[3], images[7]
    raw = (image_dir / truncated["file_name"]).read_bytes()
    (image_dir / truncated["file_name"]).write_bytes(raw[: len(raw) // 2])
    (image_dir / missing["file_name"]).unlink()
    anns[0]["bbox"] = [10.0, 10.0, 0.0, 5.0]  # zero width
    anns.append({**anns[1], "id": 10**9, "image_id": 999999})  # unknown image
    ann_file = tmp_path / "annotations.json"
    ann_file.write_text(json.dumps({**data, "images": images, "annotations": anns}))
    return {
        "annotations": str(ann_file),
        "images": str(image_dir),
        "truncated": truncated,
        "missing": missing,
        "n": len(images),
        "boxes": len(anns),
    }


def test_shards_report_rejects_and_keep_the_rest(local_ray, damaged_coco, tmp_path):
    out = tmp_path / "shards"
    config = PreprocessSettings(
        annotations=damaged_coco["annotations"],
        images=damaged_coco["images"],
        output=str(out),
        shard_size_mb=0.5,
    )
    manifest = run_preprocess(config)
    reasons = {(r.get("file_name"), r["reason"].split(":")[0]) for r in manifest["rejects"]}
    assert (damaged_coco["truncated"]["file_name"], "unreadable_image") in reasons
    assert (damaged_coco["missing"]["file_name"], "missing_image") in reasons
    assert any(r["reason"].startswith("degenerate_box") for r in manifest["rejects"])
    assert any(r["reason"].startswith("unknown_image") for r in manifest["rejects"])
    assert manifest["num_rows"] == damaged_coco["n"] - 2
    assert len(manifest["shards"]) > 1 and manifest["num_classes"] == 91
    on_disk = read_manifest(out)
    verify_shards(on_disk)
    assert len(ShardDataset(out)) == manifest["num_rows"]
    assert "rejected 2" in format_summary(manifest)

    # Deterministic: a second run writes byte-identical shards; it refuses to overwrite unasked.
    with pytest.raises(ValueError, match="overwrite=true"):
        run_preprocess(config)
    again = run_preprocess(PreprocessSettings(**{**config.__dict__, "overwrite": True}))
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]


def test_strict_mode_fails_clearly_and_leaves_no_shard_set(local_ray, damaged_coco, tmp_path):
    out = tmp_path / "strict"
    config = PreprocessSettings(
        annotations=damaged_coco["annotations"],
        images=damaged_coco["images"],
        output=str(out),
        strict=True,
    )
    with pytest.raises(ValueError, match="unknown_image"):
        run_preprocess(config)
    # The annotation-level reject stops the run before any image is read.
    with pytest.raises(ValueError, match="no manifest"):
        read_manifest(out)


def test_config_validation():
    with pytest.raises(ValueError, match="shard_size_mb"):
        PreprocessSettings(annotations="a.json", images="img", output="out", shard_size_mb=0)
    with pytest.raises(ValueError, match="preprocess: unknown field"):
        PreprocessSettings.from_dict({"annotations": "a", "images": "b", "output": "c", "x": 1})


def test_strict_mode_on_a_bad_image_removes_written_shards(local_ray, damaged_coco, tmp_path):
    path = damaged_coco["annotations"]
    data = json.loads(open(path).read())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 999999]
    with open(path, "w") as f:
        json.dump(data, f)
    out = tmp_path / "strict-images"
    config = PreprocessSettings(
        annotations=path,
        images=damaged_coco["images"],
        output=str(out),
        strict=True,
        shard_size_mb=0.5,
    )
    with pytest.raises(ValueError, match="unreadable_image|missing_image"):
        run_preprocess(config)
    assert not any(p.suffix == ".parquet" for p in out.iterdir())
    with pytest.raises(ValueError, match="no manifest"):
        read_manifest(out)


def test_uri_paths_go_through_pyarrow_filesystems(local_ray, damaged_coco, tmp_path):
    # file:// exercises the same pyarrow-filesystem code path that s3:// and gs:// take.
    out = tmp_path / "uri-out"
    config = PreprocessSettings(
        annotations="file://" + damaged_coco["annotations"],
        images="file://" + damaged_coco["images"],
        output="file://" + str(out),
    )
    lines = []
    manifest = run_preprocess(config, progress=lines.append, progress_every_s=0.0)
    assert manifest["num_rows"] == damaged_coco["n"] - 2
    verify_shards(read_manifest("file://" + str(out)))
    assert len(ShardDataset(out)) == manifest["num_rows"]
    # A start line, then one line per finished shard (every_s=0), the last one complete.
    shards = len(manifest["shards"])
    assert lines[0].startswith(f"[preprocess] {damaged_coco['n']} images -> {shards} shards")
    assert len(lines) == 1 + shards
    assert lines[-1].startswith(f"[preprocess] {shards}/{shards} shards, ")
    assert f"{damaged_coco['n']}/{damaged_coco['n']} images (100.0%)" in lines[-1]
    assert lines[-1].endswith(" 0s left")


def test_progress_lines_are_throttled_and_estimate_the_time_left():
    written = []
    progress = ShardProgress({0: 10, 1: 30, 2: 60}, written.append, every_s=3600.0)
    progress.shard_done(1)  # the first line is due at once
    progress.shard_done(0)  # within the hour: no line
    assert len(written) == 1 and written[0].startswith("[preprocess] 1/3 shards, 30/100 images")
    assert progress.line(elapsed=10.0).endswith("4.0 images/s, 15s left")
    progress.shard_done(2)  # the last shard always gets its line
    assert len(written) == 2 and "100/100 images (100.0%)" in written[1]
    slow = ShardProgress({0: 1, 1: 99}, written.append)
    assert slow.line(elapsed=10.0).endswith("0.0 images/s, ? s left")
    slow.images_done = 1
    assert slow.line(elapsed=10.0).endswith("0.1 images/s, 16m30s left")


def test_yolo_and_voc_trees_give_the_shards_of_the_same_coco_file(local_ray, tmp_path):
    """data.format=yolo and data.format=voc: the same labels as a COCO file give the same rows
    (but the file names, which follow each layout) and the same categories in the manifest."""
    annotations, images = write_coco(tmp_path / "coco")
    given = {
        "coco": {"annotations": str(annotations), "images": str(images)},
        "yolo": {"format": "yolo", "annotations": str(write_yolo(tmp_path / "yolo"))},
        "voc": {"format": "voc", "root": str(write_voc(tmp_path / "voc")), "classes": CLASSES},
    }
    rows, manifests = {}, {}
    for name, settings in given.items():
        out = tmp_path / f"shards-{name}"
        manifests[name] = run_preprocess(PreprocessSettings(output=str(out), **settings))
        verify_shards(read_manifest(out))
        rows[name] = list(iter_rows(read_manifest(out), shard_dir=str(out)))
    assert [r["file_name"] for r in rows["yolo"]][:1] == ["images/train/a.jpg"]
    assert [r["file_name"] for r in rows["voc"]][:1] == ["JPEGImages/a.jpg"]
    expected = [{k: v for k, v in r.items() if k != "file_name"} for r in rows["coco"]]
    assert len(expected) == 3 and sum(len(r["boxes"]) for r in expected) == 3
    for name in ("yolo", "voc"):
        assert [{k: v for k, v in r.items() if k != "file_name"} for r in rows[name]] == \
            expected, name
        manifest = manifests[name]
        assert manifest["categories"] == manifests["coco"]["categories"], name
        assert [c["name"] for c in manifest["categories"]] == CLASSES
        assert manifest["num_classes"] == 3 and manifest["rejects"] == []
        assert manifest["config"]["format"] == name


def test_chosen_classes_and_a_seeded_split_flow_into_both_manifests(local_ray, tmp_path):
    """data.keep_classes / data.rename_classes and data.val_fraction: the train and val runs
    of one COCO file write disjoint parts with the same new categories, and record both."""
    annotations, images = write_coco(tmp_path / "coco")  # a: car, bus; b: none; c: dog
    common = {"annotations": str(annotations), "images": str(images),
              "keep_classes": ("dog", "car"), "rename_classes": {"car": "vehicle"},
              "val_fraction": 0.5, "split_seed": 0}
    rows, manifests = {}, {}
    for part in ("train", "val"):
        out = tmp_path / part
        manifests[part] = run_preprocess(PreprocessSettings(output=str(out), split=part,
                                                            **common))
        on_disk = read_manifest(out)
        verify_shards(on_disk)
        assert on_disk["categories"] == [{"id": 0, "name": "dog", "supercategory": ""},
                                         {"id": 1, "name": "vehicle", "supercategory": ""}]
        assert on_disk["num_classes"] == 2 and on_disk["split"] == part
        assert on_disk["config"]["keep_classes"] == ["dog", "car"]
        assert on_disk["config"]["rename_classes"] == {"car": "vehicle"}
        assert on_disk["selection"]["split"]["images"] == {"train": 2, "val": 1}
        assert on_disk["selection"]["classes"]["ids"] == {"bus": None, "car": 1, "dog": 0}
        rows[part] = {r["file_name"]: r["category_ids"] for r in iter_rows(on_disk)}
    # At seed 0 c.jpg is the one image below 0.5 (samdetr.data.source_split.val_position).
    assert rows == {"train": {"a.jpg": [1], "b.jpg": []}, "val": {"c.jpg": [0]}}
    assert manifests["train"]["selection"]["classes"]["dropped_boxes"] == {"bus": 1}
    assert manifests["val"]["selection"]["classes"]["dropped_boxes"] == {"bus": 0}
    summary = format_summary(manifests["train"])
    assert "  classes         2   0 dog, 1 vehicle (car); removed 1 boxes of 1 other" in summary
    assert "  part            2   images: train of 'train' (train 2, val 1;" in summary
