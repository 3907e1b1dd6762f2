"""python -m pipelines.predict engine=ray: Ray Data reads and decodes, a pool of model actors
detects, the driver writes parts as they come. The same detections as the one-process engine on
the same images; every image exactly once, also when a model actor is killed mid-run; a shard set
as input; unreadable files skipped with their reason. One local Ray for the module."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from support.images import random_jpeg
from support.tiny import tiny_config

from pipelines.inference.predict import PredictSettings, run_predict
from samdetr.builder import build_model
from samdetr.checkpoint import save_checkpoint
from samdetr.data.synthetic import write_synthetic_shards

pytestmark = pytest.mark.integration

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 3, "name": "disc"}]
SIZES = [(96, 64), (64, 80), (70, 70), (96, 64), (80, 60), (64, 80)]


def _checkpoint(path: Path, eval_size: int) -> str:
    torch.manual_seed(0)
    config = tiny_config(num_classes=4)
    return str(save_checkpoint(path, build_model(config), config,
                               eval_transform={"size": eval_size, "max_size": 2 * eval_size},
                               categories=CATEGORIES))


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_predict")
    photos = root / "photos"
    photos.mkdir()
    for i, (w, h) in enumerate(SIZES):
        (photos / f"p{i}.jpg").write_bytes(random_jpeg(w, h, i))
    (photos / "broken.jpg").write_bytes(b"not an image")
    return {"root": root, "photos": photos, "checkpoint": _checkpoint(root / "c.pt", 64)}


def _ray_settings(**changes) -> PredictSettings:
    return PredictSettings(**{"engine": "ray", "actors": 2, "cpus_per_actor": 0.5,
                              "batch_size": 2, "score_threshold": 0.0, "num_top": 5,
                              "pictures": False, **changes})


def _detections(out: Path) -> list[dict]:
    return pq.read_table(out / "detections").to_pylist()


def _results(out: Path) -> list[dict]:
    return [r for part in sorted((out / "results").glob("part-*.json"))
            for r in json.loads(part.read_text())]


def _assert_same(found: list[dict], expected: list[dict], count: int) -> None:
    """The same COCO results image by image (by file name), within float tolerance."""
    def scored(results):
        return sorted(((Path(r["file_name"]).name, r["category_id"], r["score"], r["bbox"])
                       for r in results), key=lambda t: (t[0], -t[2]))

    assert len(found) == len(expected) == count
    for (f1, c1, s1, b1), (f2, c2, s2, b2) in zip(scored(found), scored(expected),
                                                  strict=True):
        assert (f1, c1) == (f2, c2)
        assert s1 == pytest.approx(s2, abs=1e-4) and b1 == pytest.approx(b2, abs=1e-3)


def test_the_ray_engine_finds_what_the_local_engine_finds(local_ray, case, tmp_path):
    local, distributed = tmp_path / "local", tmp_path / "ray"
    run_predict(PredictSettings(checkpoint=case["checkpoint"], images=str(case["photos"]),
                                output=str(local), score_threshold=0.0, num_top=5,
                                pictures=False, batch_size=2))
    summary = run_predict(_ray_settings(checkpoint=case["checkpoint"],
                                        images=str(case["photos"]), output=str(distributed),
                                        part_images=2, pictures=True, salient_points=True))
    assert (summary["images"], summary["skipped"], summary["detections"]) == (6, 1, 30)
    assert summary["parts"] == 3 and summary["repeats"] == 0 and summary["images_per_s"] > 0
    # images.json: ids are the files' positions in the sorted list (broken.jpg is 0).
    images = json.loads((distributed / "images.json").read_text())
    assert [(i["id"], Path(i["file_name"]).name, i["width"], i["height"]) for i in images] == [
        (k + 1, f"p{k}.jpg", w, h) for k, (w, h) in enumerate(SIZES)]
    files = {i["id"]: i["file_name"] for i in images}
    assert (distributed / "skipped.txt").read_text().startswith(
        f"{case['photos'] / 'broken.jpg'}\tValueError: ")
    # The same detections, image by image, as the one-process engine's results.json.
    results = _results(distributed)
    _assert_same(results, json.loads((local / "results.json").read_text()), 30)
    assert all(r["file_name"] == files[r["image_id"]] for r in results)
    # The Parquet parts hold the same detections, one row each, with class names.
    rows = _detections(distributed)
    assert len(rows) == 30 and {r["image_id"] for r in rows} == set(files)
    assert {r["name"] for r in rows if r["label"] in (1, 3)} <= {"square", "disc"}
    assert all(0 <= r["x1"] <= r["x2"] <= 96 for r in rows)
    pictures = sorted(p.name for p in (distributed / "pictures").iterdir())
    assert pictures == [f"{k + 1:06d}_p{k}.png" for k in range(len(SIZES))]
    assert Image.open(distributed / "pictures" / pictures[0]).size == SIZES[0]


def _model_actor_processes() -> list[tuple[int, str]]:
    """``(pid, title)`` of this test's model actors: processes below this one (the local Ray it
    started) whose Ray title names the ModelActor stage."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if "ModelActor" in title:
            found.append((pid, title))
    return found


def test_a_killed_model_actor_loses_and_doubles_nothing(local_ray, case, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    count = 16
    for i in range(count):
        (photos / f"q{i:02d}.jpg").write_bytes(random_jpeg(200, 150, 100 + i))
    checkpoint = _checkpoint(tmp_path / "c.pt", 192)  # slower batches: the kill lands mid-run
    out = tmp_path / "out"
    killed: dict[str, object] = {}

    def kill_one_actor_once_parts_come() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            parts = list((out / "detections").glob("part-*.parquet"))
            actors = _model_actor_processes()
            if parts and actors:
                busy = [a for a in actors if a[1].endswith(".submit")] or actors
                os.kill(busy[0][0], signal.SIGKILL)
                killed.update(pid=busy[0][0], title=busy[0][1], parts=len(parts))
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_actor_once_parts_come, daemon=True)
    killer.start()
    summary = run_predict(_ray_settings(checkpoint=checkpoint, images=str(photos),
                                        output=str(out), num_top=3, part_images=1))
    killer.join(timeout=5)
    assert killed, "no model actor was found to kill"
    assert killed["parts"] < count, "the run ended before the kill"
    assert (summary["images"], summary["skipped"], summary["repeats"]) == (count, 0, 0)
    images = json.loads((out / "images.json").read_text())
    assert [Path(i["file_name"]).name for i in images] == [f"q{i:02d}.jpg" for i in range(count)]
    # Every image's detections once: num_top each, in the Parquet parts and the COCO results.
    for rows in (_detections(out), _results(out)):
        ids = [r["image_id"] for r in rows]
        assert sorted(set(ids)) == list(range(count))
        assert all(ids.count(i) == 3 for i in range(count))
    assert len(list((out / "results").glob("part-*.json"))) == count


def test_a_shard_set_is_read_as_images(local_ray, case, tmp_path):
    write_synthetic_shards(tmp_path / "data", tmp_path / "shards", 5, seed=3, split="val",
                           image_size=(60, 80), max_objects=2)
    summary = run_predict(_ray_settings(checkpoint=case["checkpoint"],
                                        images=str(tmp_path / "shards"),
                                        output=str(tmp_path / "s"), num_top=2))
    assert (summary["images"], summary["skipped"], summary["detections"]) == (5, 0, 10)
    coco = json.loads((tmp_path / "data" / "annotations.json").read_text())
    source = {i["id"]: i["file_name"] for i in coco["images"]}
    images = json.loads((tmp_path / "s" / "images.json").read_text())
    assert {i["id"]: i["file_name"] for i in images} == source  # the shards' own image ids
    # The same detections as the one-process engine on the source files.
    local = run_predict(PredictSettings(checkpoint=case["checkpoint"],
                                        images=str(tmp_path / "data" / "images"),
                                        output=str(tmp_path / "l"), score_threshold=0.0,
                                        num_top=2, pictures=False, exif_transpose=False))
    assert local["detections"] == 10
    _assert_same(_results(tmp_path / "s"),
                 json.loads((tmp_path / "l" / "results.json").read_text()), 10)
