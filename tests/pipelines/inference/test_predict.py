"""python -m pipelines.predict: a checkpoint or a registered model on a folder, a glob, a list
or an object store; COCO results, a CSV, pictures; unreadable images skipped."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import mlflow
import pytest
import torch
from PIL import Image
from support.images import random_jpeg
from support.tiny import tiny_config

from pipelines.common.tracking import store_client, using_store
from pipelines.inference.predict import PredictSettings, run_predict
from pipelines.registry.mlflow_model import log_detector_model
from samdetr.builder import build_model
from samdetr.checkpoint import save_checkpoint
from samdetr.data.storage import list_files

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 3, "name": "disc"}]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    photos = root / "photos"
    photos.mkdir()
    for i, (w, h) in enumerate([(96, 64), (64, 80), (70, 70)]):
        (photos / f"p{i}.jpg").write_bytes(random_jpeg(w, h, i))
    (photos / "broken.jpg").write_bytes(b"not an image")
    (photos / "notes.txt").write_text("not listed: not an image name")
    torch.manual_seed(0)
    config = tiny_config(num_classes=4)
    checkpoint = save_checkpoint(root / "checkpoint.pt", build_model(config), config,
                                 eval_transform={"size": 64, "max_size": 96},
                                 categories=CATEGORIES)
    return {"root": root, "photos": photos, "checkpoint": str(checkpoint)}


def test_a_folder_gives_results_a_table_pictures_and_the_skipped_list(case, tmp_path):
    summary = run_predict(PredictSettings(checkpoint=case["checkpoint"], images=str(case["photos"]),
                                        output=str(tmp_path), score_threshold=0.0, num_top=5,
                                        salient_points=True))
    assert summary["images"] == 3 and summary["skipped"] == 1 and summary["detections"] == 15
    images = json.loads((tmp_path / "images.json").read_text())
    assert [i["file_name"].rsplit("/", 1)[1] for i in images] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert [(i["width"], i["height"]) for i in images] == [(96, 64), (64, 80), (70, 70)]
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 15 and {r["image_id"] for r in results} == {0, 1, 2}
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score", "file_name"}
    assert {r["category_id"] for r in results} <= {0, 1, 2, 3}
    rows = list(csv.DictReader((tmp_path / "detections.csv").open()))
    assert len(rows) == 15
    assert {r["name"] for r in rows if r["label"] in ("1", "3")} <= {"square", "disc"}
    assert all(0 <= float(r["x1"]) <= float(r["x2"]) <= 96 for r in rows)  # clipped to image
    pictures = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert pictures == ["000000_p0.png", "000001_p1.png", "000002_p2.png"]
    assert Image.open(tmp_path / "pictures" / pictures[0]).size == (96, 64)
    skipped = (tmp_path / "skipped.txt").read_text()
    assert skipped.startswith(str(case["photos"] / "broken.jpg") + "\t")


def test_globs_lists_and_the_threshold(case, tmp_path):
    one = run_predict(PredictSettings(checkpoint=case["checkpoint"],
                                    images=str(case["photos"] / "p[01].jpg"),
                                    output=str(tmp_path / "a"), pictures=False,
                                    score_threshold=1.0))
    assert (one["images"], one["detections"]) == (2, 0)  # no score reaches 1
    listed = [str(case["photos"] / "p2.jpg"), str(case["photos"] / "p0.jpg")]
    two = run_predict(PredictSettings(checkpoint=case["checkpoint"], images=listed,
                                    output=str(tmp_path / "b"), pictures=False, num_top=2,
                                    score_threshold=0.0))
    files = [i["file_name"] for i in json.loads((tmp_path / "b/images.json").read_text())]
    assert files == listed and two["detections"] == 4
    assert not (tmp_path / "b" / "pictures").exists()


def test_a_registered_model_predicts_what_its_checkpoint_predicts(case, tmp_path):
    uri = f"sqlite:///{case['root']}/mlflow.db"
    with using_store(uri), mlflow.start_run():
        log_detector_model(case["checkpoint"], registered_model_name="predict-test")
    store_client(uri).set_registered_model_alias("predict-test", "champion", "1")
    run_predict(PredictSettings(model_uri="models:/predict-test@champion",
                              images=str(case["photos"]), output=str(tmp_path / "m"),
                              score_threshold=0.0, pictures=False, tracking_uri=uri))
    run_predict(PredictSettings(checkpoint=case["checkpoint"], images=str(case["photos"]),
                              output=str(tmp_path / "c"), score_threshold=0.0, pictures=False))
    assert (tmp_path / "m/results.json").read_text() == (tmp_path / "c/results.json").read_text()


@pytest.mark.parametrize("node, message", [
    ({"images": []}, "images must be"),
    ({"score_threshold": 2}, r"score_threshold must be in \[0, 1\]"),
    ({"num_top": 0}, "num_top must be an integer >= 1"),
    ({"salient_points": "yes"}, "salient_points must be true or false"),
    ({"model_uri": "models:/a@b"}, "exactly one of model_uri"),
    ({"checkpoint": None, "model_uri": "outputs/x"}, "model_uri must start with one of"),
])
def test_bad_settings_get_clear_errors(case, node, message):
    with pytest.raises(ValueError, match=message):
        PredictSettings(**{"checkpoint": case["checkpoint"], "images": "x", "output": "o", **node})


def test_a_source_that_names_nothing_is_refused(case, tmp_path):
    with pytest.raises(ValueError, match="names no file"):
        run_predict(PredictSettings(checkpoint=case["checkpoint"], images=str(tmp_path / "none"),
                                  output=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="only the last part of a path may hold a wildcard"):
        list_files(str(tmp_path / "*" / "a.jpg"))


def test_images_on_an_object_store(case, tmp_path):
    from support.s3_server import moto_s3

    with moto_s3("photos") as s3:
        for name in ("p0.jpg", "p1.jpg", "broken.jpg"):
            s3.client.put_object(Bucket="photos", Key=f"set/{name}",
                                 Body=(case["photos"] / name).read_bytes())
        assert list_files("s3://photos/set/p*.jpg") == ["s3://photos/set/p0.jpg",
                                                        "s3://photos/set/p1.jpg"]
        summary = run_predict(PredictSettings(checkpoint=case["checkpoint"], images="s3://photos/set",
                                            output=str(tmp_path), pictures=False,
                                            score_threshold=0.0, num_top=3))
    assert (summary["images"], summary["skipped"], summary["detections"]) == (2, 1, 6)
    files = [i["file_name"] for i in json.loads((tmp_path / "images.json").read_text())]
    assert files == ["s3://photos/set/p0.jpg", "s3://photos/set/p1.jpg"]


def test_the_command_line(case, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.predict", f"checkpoint={case['checkpoint']}",
         f"images={case['photos']}", f"output={out}", f"output_root={tmp_path}",
         "salient_points=true"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[predict] 3 images" in proc.stdout and "skipped" in proc.stdout
    assert (out / "results.json").is_file() and len(list((out / "pictures").iterdir())) == 3
