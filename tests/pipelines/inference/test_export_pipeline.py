"""python -m pipelines.export: a registered version to ONNX with its parity report, recorded in
MLflow beside the version; a checkpoint to an ExportedProgram through the command line; bad
settings refused with the setting named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from support.tiny import tiny_config

from pipelines.common.tracking import store_client, using_store
from pipelines.inference.export import ExportSettings, format_export, parity_sizes, run_export
from pipelines.registry.mlflow_model import log_detector_model
from samdetr.builder import build_model
from samdetr.checkpoint import save_checkpoint
from samdetr.export.runtime import OnnxDetector

pytestmark = pytest.mark.integration  # exports, an MLflow store, a new interpreter

ROOT = Path(__file__).resolve().parents[3]
CATEGORIES = [{"id": 1, "name": "square"}, {"id": 3, "name": "disc"}]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    config = tiny_config(num_classes=4, num_encoder_layers=1)
    checkpoint = save_checkpoint(root / "checkpoint.pt", build_model(config), config,
                                 eval_transform={"size": 64, "max_size": 96},
                                 categories=CATEGORIES)
    uri = f"sqlite:///{root}/mlflow.db"
    with using_store(uri), mlflow.start_run():
        log_detector_model(checkpoint, registered_model_name="export-test")
    store_client(uri).set_registered_model_alias("export-test", "champion", "1")
    return {"root": root, "checkpoint": str(checkpoint), "uri": uri}


def test_a_registered_version_exports_with_its_report_and_is_recorded(case):
    output = case["root"] / "exports" / "champion.onnx"
    summary = run_export(ExportSettings(model_uri="models:/export-test@champion",
                                        output=str(output), postprocess=True,
                                        tracking_uri=case["uri"]))
    assert summary["passed"] and summary["exporter"] == "dynamo", format_export(summary)
    report = json.loads(Path(summary["report"]).read_text())
    assert report["passed"] and report["max"]["agreement"] == 1.0
    # The model's eval size, landscape and portrait, alone and as one padded pair.
    assert [row["shape"] for row in report["batches"]] == [
        [1, 3, 64, 85], [1, 3, 85, 64], [2, 3, 85, 85]]
    assert report["export"]["source"] == "models:/export-test@champion"
    detector = OnnxDetector(output)
    assert detector.categories == {1: "square", 3: "disc"}
    assert detector.metadata["samdetr.registered_model"] == "export-test"
    assert detector.metadata["samdetr.model_version"] == "1"
    assert json.loads(detector.metadata["samdetr.eval_transform"]) == {"size": 64,
                                                                      "max_size": 96}
    client = store_client(case["uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["samdetr.model_version"] == "1"
    assert run.data.tags["samdetr.export.parity"] == "passed"
    assert run.data.params["exporter"] == "dynamo"
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "export")}
    assert logged == {"champion.onnx", "champion.onnx.parity.json"}
    assert "parity passed" in format_export(summary)


def test_a_checkpoint_exports_from_the_command_line(case):
    output = case["root"] / "exports" / "checkpoint.pt2"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.export", f"checkpoint={case['checkpoint']}",
         "format=exported_program", f"output={output}", "parity_sizes=[[64,80]]",
         f"output_root={case['root']}/outputs"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exporter torch.export" in done.stdout and "parity passed" in done.stdout
    report = json.loads(output.with_name("checkpoint.pt2.parity.json").read_text())
    assert [row["shape"] for row in report["batches"]] == [[1, 3, 64, 80]]
    assert report["export"]["format"] == "exported_program"


@pytest.mark.parametrize("node, message", [
    ({}, "exactly one of model_uri"),
    ({"checkpoint": "c.pt", "model_uri": "models:/a@b"}, "exactly one of model_uri"),
    ({"model_uri": "outputs/x"}, "model_uri must start with one of"),
    ({"checkpoint": "c.pt", "format": "tflite"}, "format must be one of"),
    ({"checkpoint": "c.pt", "roi_align": "matmul"}, "roi_align must be one of torchvision"),
    ({"checkpoint": "c.pt", "output": "m.pt2"}, r"output must end with \.onnx"),
    ({"checkpoint": "c.pt", "format": "exported_program"}, r"output must end with \.pt2"),
    ({"checkpoint": "c.pt", "postprocess": "yes"}, "postprocess must be true or false"),
    ({"checkpoint": "c.pt", "num_top": 0}, "num_top must be an integer >= 1"),
    ({"checkpoint": "c.pt", "parity_sizes": [[64]]}, "parity_sizes must be a list"),
])
def test_bad_settings_get_clear_errors(node, message):
    with pytest.raises(ValueError, match=message):
        ExportSettings(**{"output": "m.onnx", **node})


def test_the_parity_images_follow_the_model_s_eval_size():
    settings = ExportSettings(checkpoint="c.pt", output="m.onnx")
    assert parity_sizes(settings, {"size": 800, "max_size": 1333}) == [(800, 1067), (1067, 800)]
    assert parity_sizes(settings, {"size": 600, "max_size": 700}) == [(600, 700), (700, 600)]
    assert parity_sizes(settings, None) == [(800, 1067), (1067, 800)]
    given = ExportSettings(checkpoint="c.pt", output="m.onnx", parity_sizes=[[50, 60]])
    assert parity_sizes(given, None) == [(50, 60)]


def test_predict_runs_the_recorded_export_of_a_version_like_its_pytorch_model(case):
    """runtime=onnx with a model URI finds the version's export that pipelines.export recorded
    (the test above) and detects what runtime=torch does, in this process and in the Ray
    engine's model actors."""
    from support.images import random_jpeg

    from pipelines.inference.predict import PredictSettings, run_predict

    if not list((case["root"] / "exports").glob("champion.onnx")):
        test_a_registered_version_exports_with_its_report_and_is_recorded(case)
    images = case["root"] / "images"
    images.mkdir(exist_ok=True)
    for i, (width, height) in enumerate([(90, 70), (64, 100), (90, 70)]):
        (images / f"im{i}.jpg").write_bytes(random_jpeg(width, height, seed=i))
    common = {"images": str(images), "score_threshold": 0.0, "pictures": False,
              "tracking_uri": case["uri"], "device": "cpu"}
    results = {}
    for name, extra in {
        "torch": {"model_uri": "models:/export-test/1"},
        "onnx": {"model_uri": "models:/export-test@champion", "runtime": "onnx"},
    }.items():
        out = case["root"] / "predict" / name
        run_predict(PredictSettings(output=str(out), **common, **extra))
        results[name] = json.loads((out / "results.json").read_text())
    # Every (query, class) pair of the tiny model (10 queries x 4 classes) for 3 images.
    assert len(results["torch"]) == len(results["onnx"]) == 3 * 40
    for got, want in zip(results["onnx"], results["torch"], strict=True):
        assert (got["image_id"], got["category_id"]) == (want["image_id"], want["category_id"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-2)
    # The Ray engine's model actors run the export the driver fetched once.
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        out = case["root"] / "predict" / "onnx-ray"
        run_predict(PredictSettings(output=str(out), **common, engine="ray", cpus_per_actor=0.5,
                                    model_uri="models:/export-test@champion", runtime="onnx"))
    finally:
        ray.shutdown()
    parts = [r for part in sorted((out / "results").glob("part-*.json"))
             for r in json.loads(part.read_text())]
    def ordered(rows):
        return sorted(rows, key=lambda r: (r["image_id"], r["category_id"], r["score"]))

    assert len(parts) == len(results["onnx"])
    for got, want in zip(ordered(parts), ordered(results["onnx"]), strict=True):
        assert (got["image_id"], got["category_id"]) == (want["image_id"], want["category_id"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    with pytest.raises(ValueError, match="no exported_program export of export-test v1"):
        run_predict(PredictSettings(output=str(case["root"] / "predict" / "none"), **common,
                                    model_uri="models:/export-test@champion",
                                    runtime="exported_program"))


@pytest.mark.parametrize("node, message", [
    ({"exported": "d.onnx"}, "exported is run with runtime=onnx"),
    ({"runtime": "tflite", "checkpoint": "c.pt"}, "runtime must be one of torch"),
    ({"runtime": "onnx", "checkpoint": "c.pt"}, "a checkpoint runs with runtime=torch"),
    ({"runtime": "onnx"}, "needs exported=FILE or model_uri"),
    ({"runtime": "onnx", "exported": "d.pt2"}, r"runs a \.onnx file"),
    ({"runtime": "onnx", "exported": "d.onnx", "model_uri": "models:/a@b"},
     "leave model_uri and checkpoint unset"),
    ({"runtime": "onnx", "exported": "d.onnx", "device": "cuda"}, "runs on the CPU"),
])
def test_bad_runtime_settings_get_clear_errors(node, message):
    from pipelines.inference.predict import PredictSettings

    with pytest.raises(ValueError, match=message):
        PredictSettings(images="x/", output="out", **node)
