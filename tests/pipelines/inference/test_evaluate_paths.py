"""A checkpoint and the MLflow model logged from it score the same on the same shards:
evaluation batches hold images of one size (nothing padded), as the model's predictor does.
And the command's MLflow settings: ``mlflow_experiment=``, not Hydra's ``experiment`` group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from support.tiny import tiny_config

from pipelines.common.tracking import using_store
from pipelines.inference.evaluate import (
    EvaluateSettings,
    evaluate_checkpoint,
    evaluate_mlflow_model,
    format_metrics,
    run_evaluate,
)
from pipelines.registry.mlflow_model import log_detector_model
from pipelines.registry.register import fetched_model
from samdetr.builder import build_model
from samdetr.checkpoint import save_checkpoint
from samdetr.data.shards import read_manifest
from samdetr.data.synthetic import write_synthetic_shards
from samdetr.engine.evaluation import eval_loader, eval_shapes, shape_batches
from samdetr.engine.loop import predict

EVAL = {"size": 64, "max_size": 96}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    # 11 images of 48-50 px sides, 4 shapes once resized (64 x 64, 64 x 65, 64 x 67, 67 x 64):
    # batches of 4 in stored order would pad most of them.
    write_synthetic_shards(root / "data", root / "shards", 11, seed=3, image_size=(48, 50),
                           max_objects=3)
    shards = str(root / "shards")
    categories = read_manifest(shards)["categories"]
    torch.manual_seed(0)
    config = tiny_config(num_classes=8)
    model = build_model(config).eval()
    checkpoint = save_checkpoint(root / "checkpoint.pt", model, config, eval_transform=EVAL,
                                 eval_batch_size=4,
                                 categories=[{"id": c["id"], "name": c["name"]}
                                             for c in categories])
    store = f"sqlite:///{root}/mlflow.db"
    with using_store(store), mlflow.start_run():
        uri = log_detector_model(checkpoint).model_uri
    return {"shards": shards, "checkpoint": str(checkpoint), "uri": uri, "model": model,
            "root": root, "store": store}


def test_shape_batches_keep_order_and_never_mix_shapes():
    shapes = [(2, 1), (3, 1), (2, 1), (2, 1), (3, 1), (2, 1), (4, 4)]
    assert shape_batches(shapes, 2) == [[0, 2], [1, 4], [3, 5], [6]]
    assert shape_batches(shapes, 10) == [[0, 2, 3, 5], [1, 4], [6]]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        shape_batches(shapes, 0)


def test_every_batch_is_unpadded_and_ranks_split_whole_batches(case):
    shapes = eval_shapes(case["shards"], **EVAL)
    assert shape_batches(shapes, 4) == [[0, 1], [2, 4, 5], [3, 9], [6, 7, 8, 10]]
    seen = []
    for rank in (0, 1):
        for _, mask, targets in eval_loader(case["shards"], batch_size=4, rank=rank,
                                                 world_size=2, **EVAL):
            assert not mask.any()  # no padded pixel
            seen += [int(t["image_id"]) for t in targets]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 11


def test_the_logged_model_detects_what_the_evaluation_scores(case):
    """Per image, the pyfunc model's detections are those of the evaluation loop."""
    import pandas as pd

    from samdetr.data.shards import iter_rows

    loader = eval_loader(case["shards"], batch_size=4, **EVAL)
    expected = {d["image_id"]: d for d in predict(case["model"], loader, torch.device("cpu"))}
    with fetched_model(case["store"], case["uri"]) as local:
        model = mlflow.pyfunc.load_model(local)
    rows = list(iter_rows(read_manifest(case["shards"]), shard_dir=case["shards"],
                          columns=["image_id", "image"]))
    frame = pd.DataFrame({"image": [r["image"] for r in rows]})
    table = model.predict(frame, params={"clip_boxes": False})
    clipped = model.predict(frame)  # by default the boxes stay inside the image
    assert (clipped[["x1", "y1"]].to_numpy() >= 0).all()
    assert (clipped[["x1", "x2"]].to_numpy() <= 50).all()  # images are at most 50 px wide
    assert not (table[["x1", "y1"]].to_numpy() >= 0).all()  # some predictions reach past it
    for index, row in enumerate(rows):
        mine = table[table["image_index"] == index]
        want = expected[int(row["image_id"])]
        np.testing.assert_allclose(mine["score"].to_numpy(), want["scores"], rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(mine[["x1", "y1", "x2", "y2"]].to_numpy(), want["boxes"],
                                   atol=1e-3)


def test_checkpoint_and_registered_model_score_the_same(case):
    from_checkpoint = evaluate_checkpoint(case["checkpoint"], case["shards"])
    with fetched_model(case["store"], case["uri"]) as local:
        from_model = evaluate_mlflow_model(local, case["shards"])
    assert from_checkpoint.keys() == from_model.keys()
    for name, value in from_checkpoint.items():
        assert from_model[name] == pytest.approx(value, abs=1e-6), name


def test_a_store_uri_is_refused_where_a_fetched_folder_is_needed(case):
    """MLflow would look ``models:/`` up in its default store, not the command's."""
    with pytest.raises(ValueError, match="not a local MLflow model folder"):
        evaluate_mlflow_model(case["uri"], case["shards"])


def test_the_evaluation_runs_experiment_is_mlflow_experiment():
    from hydra import compose, initialize_config_dir

    from pipelines.cli.config_store import settings_dict

    conf = Path(__file__).resolve().parents[3] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        plain = settings_dict(compose(config_name="evaluate", overrides=[
            "shards=s", "checkpoint=c.pt", "mlflow_experiment=holdout-scores"]))
    assert EvaluateSettings(**plain).mlflow_experiment == "holdout-scores"
    with pytest.raises(ValueError, match="mlflow_experiment must name"):
        EvaluateSettings(shards="s", checkpoint="c.pt", mlflow_experiment="")


@pytest.mark.parametrize("argument", ["experiment=holdout-scores", "+experiment=shapes_small"])
def test_experiment_on_the_command_line_points_to_mlflow_experiment(argument, tmp_path):
    """``experiment=`` is train's and tune's recipe group: here a clear refusal, not Hydra's
    "Could not override 'experiment'" nor a recipe merged into the evaluation's settings."""
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.evaluate", "shards=s", "checkpoint=c.pt", argument],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert "mlflow_experiment=NAME" in done.stdout and argument in done.stdout


def test_the_command_reports_each_class(case, tmp_path):
    out = tmp_path / "metrics.json"
    result = run_evaluate(EvaluateSettings(shards=case["shards"], checkpoint=case["checkpoint"],
                                           confusion_score_threshold=0.0, output=str(out)))
    categories = read_manifest(case["shards"])["categories"]
    rows = result["per_class"]
    assert [r["name"] for r in rows] == [c["name"] for c in categories]
    measured = [r["AP"] for r in rows if r["num_gt"]]
    assert measured and result["metrics"]["AP"] == pytest.approx(np.mean(measured))
    for row in rows:  # at score >= 0 every box is found, taken for another class or missed
        assert row["found"] + row["as_other"] + row["missed"] == row["num_gt"], row
        assert len(row["precision50"]) == (101 if row["num_gt"] else 0)
    assert result["confusion_matrix"]["score_threshold"] == 0.0
    text = format_metrics(result)
    assert "per class (found / as other / missed / false pos: IoU >= 0.5, score >= 0)" in text
    assert all(f"    {c['name']} " in text for c in categories)
    assert json.loads(out.read_text())["per_class"] == rows
