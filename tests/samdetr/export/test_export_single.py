"""The single-scale model exported: ONNX through the dynamo exporter (post-processing in the
graph), an ExportedProgram, and ONNX through the TorchScript exporter; each gives the PyTorch
model's outputs and top-100 detections at two image sizes, batch 1 and 2 (support/export_case.py
states the tolerances). Also what the file carries, and what the runners refuse."""

from __future__ import annotations

import json

import pytest
import torch
from support.export_case import check_runner
from support.tiny import tiny_config

from samdetr.builder import build_model
from samdetr.config import DetectorConfig
from samdetr.export.exporter import export_model
from samdetr.export.parity import generated_images, parity_report
from samdetr.export.runtime import ExportedProgramDetector, OnnxDetector, read_onnx_metadata

# Exports take tens of seconds: the module runs as a whole, in the integration tier.
pytestmark = pytest.mark.integration

CATEGORIES = {1: "square", 3: "disc", 7: "triangle"}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    torch.manual_seed(0)
    config = tiny_config(num_classes=20, num_encoder_layers=1)
    model = build_model(config).eval()
    folder = tmp_path_factory.mktemp("export-single")
    onnx = export_model(model, folder / "single.onnx", config=config, categories=CATEGORIES,
                        postprocess=True, extra_metadata={"samdetr.model_version": "7"})
    model.train()  # exported from training mode: the export is of an eval copy
    program = export_model(model, folder / "single.pt2", format="exported_program",
                           config=config)
    stayed_training = model.training
    return {"model": model.eval(), "config": config, "onnx": onnx, "program": program,
            "folder": folder, "stayed_training": stayed_training}


def test_the_dynamo_exporter_exports_it_with_free_sizes(single):
    result = single["onnx"]
    assert result.exporter == "dynamo" and result.fallback_reason is None
    assert result.input_ranges["batch"] == [1, None]
    # Larger than one cell of the stride-32 map; no upper bound.
    assert result.input_ranges["height"][1] is None and result.input_ranges["width"][1] is None
    assert result.input_ranges["height"][0] <= 64
    assert result.output_names == ("pred_logits", "pred_boxes", "scores", "labels", "boxes",
                                   "queries")


def test_onnx_runtime_gives_the_model_s_outputs_and_detections(single):
    assert check_runner(single["model"], OnnxDetector(single["onnx"].path),
                        postprocessed=True) == 3


def test_the_exported_program_gives_them_too(single):
    detector = ExportedProgramDetector(single["program"].path)
    assert single["program"].exporter == "torch.export"
    assert detector.output_names == ["pred_logits", "pred_boxes"]
    check_runner(single["model"], detector, postprocessed=False)


def test_the_torchscript_exporter_is_there_when_asked_for(single):
    result = export_model(single["model"], single["folder"] / "traced.onnx",
                          exporter="torchscript")
    assert result.exporter == "torchscript" and result.input_ranges == {}
    check_runner(single["model"], OnnxDetector(result.path), postprocessed=False)


def test_the_file_names_its_classes_config_and_graph(single):
    info = read_onnx_metadata(single["onnx"].path)
    assert json.loads(info["samdetr.categories"]) == [
        {"id": 1, "name": "square"}, {"id": 3, "name": "disc"}, {"id": 7, "name": "triangle"}]
    assert DetectorConfig.from_dict(json.loads(info["samdetr.config"])) == single["config"]
    assert json.loads(info["samdetr.inputs"]) == ["images", "mask", "orig_sizes"]
    assert info["samdetr.exporter"] == "dynamo" and info["samdetr.num_top"] == "100"
    assert info["samdetr.roi_align"] == "torchvision" and info["samdetr.model_version"] == "7"
    assert OnnxDetector(single["onnx"].path).categories == CATEGORIES
    program = ExportedProgramDetector(single["program"].path)
    assert json.loads(program.metadata["samdetr.config"]) == single["config"].to_dict()


def test_the_caller_s_model_is_left_as_it_was(single):
    aligners = [m for m in single["model"].modules() if hasattr(m, "roi_align")]
    assert aligners and {m.roi_align for m in aligners} == {"auto"}  # tiny_config's default
    assert single["stayed_training"]


def test_the_parity_report_passes_and_catches_another_model(single):
    images = generated_images([(72, 100), (90, 66)], seed=3)
    runner = OnnxDetector(single["onnx"].path)
    report = parity_report(single["model"], runner, images)
    assert report["passed"] and report["max"]["agreement"] == 1.0
    assert [row["shape"][0] for row in report["batches"]] == [1, 1, 2]
    torch.manual_seed(1)  # the same architecture, other weights: everything differs
    other = build_model(single["config"]).eval()
    failed = parity_report(other, runner, images)
    assert not failed["passed"] and failed["max"]["agreement"] < 1.0
    assert any("pred_logits_max_abs" in text for text in failed["failures"])


@pytest.mark.parametrize("call, message", [
    (lambda d, x, m: d(x[:, :2], m), r"images must be a \(B, 3, H, W\)"),
    (lambda d, x, m: d(x, m[:, :-1]), "mask must be bool"),
    (lambda d, x, m: d(x, m.float()), "mask must be bool"),
    (lambda d, x, m: d(x, m), "pass orig_sizes"),
    (lambda d, x, m: d(x, m, torch.tensor([[10, 10]])), r"orig_sizes must be \(B, 2\)"),
])
def test_the_onnx_runner_refuses_bad_inputs_with_a_reason(single, call, message):
    images, mask = torch.zeros(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match=message):
        call(OnnxDetector(single["onnx"].path), images, mask)


def test_a_graph_without_post_processing_takes_no_sizes(single):
    detector = ExportedProgramDetector(single["program"].path)
    with pytest.raises(ValueError, match="no post-processing"):
        detector(torch.zeros(1, 3, 64, 64), None, torch.tensor([[64, 64]]))
    assert detector(torch.zeros(1, 3, 64, 64))["pred_logits"].shape == (1, 10, 20)


@pytest.mark.parametrize("kind", ["onnx", "program"])
def test_a_predictor_on_the_exported_file_detects_as_on_the_model(single, kind):
    """Predictor.from_exported: the same preprocessing and detections in the images' pixels;
    the ONNX graph post-processes itself, the ExportedProgram's outputs are post-processed by
    the predictor."""
    from support.images import random_jpeg

    from samdetr.inference import Predictor

    images = [random_jpeg(120, 90, seed=1), random_jpeg(90, 130, seed=2),
              random_jpeg(120, 90, seed=3)]
    sizes = {"eval_size": 96, "max_size": 160}
    exported = Predictor.from_exported(single[kind].path, batch_size=2, **sizes)
    assert exported.exported and "exported" in repr(exported)
    if kind == "onnx":  # the file names its classes
        assert exported.category_names == CATEGORIES
    reference = Predictor(single["model"], batch_size=2, **sizes)
    for got, want in zip(exported(images), reference(images), strict=True):
        assert got["labels"].tolist() == want["labels"].tolist()
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-4)
        torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=1e-2)
        assert got["points"].shape[1] == 0  # no salient points from an exported graph
    with pytest.raises(ValueError, match="runs on the CPU here"):
        Predictor.from_exported(single[kind].path, device="cuda")
    with pytest.raises(ValueError, match="expected a .onnx or .pt2 file"):
        Predictor.from_exported(single["folder"] / "checkpoint.pth")
