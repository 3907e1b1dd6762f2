"""samdetr.export without a full export: what export_model refuses and why, the fallback to the
TorchScript exporter where torch.export cannot trace, how detections are matched (ties
included) and the generated parity images."""

from __future__ import annotations

import pytest
import torch
from support.tiny import tiny_config

from samdetr.builder import build_model
from samdetr.export.exporter import ExportGraph, export_model, metadata, write_onnx
from samdetr.export.parity import compare_detections, generated_images
from samdetr.export.runtime import OnnxDetector


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config(num_encoder_layers=1)).eval()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"format": "tflite"}, ValueError, "format must be one of"),
    ({"roi_align": "matmul"}, ValueError, "matmul RoIAlign sizes its sample grid"),
    ({"exporter": "jit"}, ValueError, "exporter must be one of"),
    ({"format": "exported_program", "exporter": "torchscript"}, ValueError, "ONNX only"),
    ({"postprocess": 1}, TypeError, "postprocess must be true or false"),
    ({"num_top": 0}, ValueError, "num_top must be a positive int"),
    ({"categories": [(1, "a")]}, TypeError, "categories must be a mapping"),
    ({"config": {"model": {}}}, TypeError, "config must be a DetectorConfig"),
    ({"extra_metadata": {"version": 3}}, TypeError, "extra_metadata must map strings"),
])
def test_bad_arguments_are_refused_before_anything_is_traced(model, tmp_path, kwargs, error,
                                                             message):
    with pytest.raises(error, match=message):
        export_model(model, tmp_path / "m.onnx", **kwargs)
    assert not (tmp_path / "m.onnx").exists()


def test_only_a_detector_exports(tmp_path):
    with pytest.raises(TypeError, match="must be a samdetr SAMDETR"):
        export_model(torch.nn.Linear(2, 2), tmp_path / "m.onnx")


class BranchOnValue(ExportGraph):
    """The detector with a Python branch on an output's value: torch.export refuses to trace
    it (the branch depends on data), the TorchScript tracer records the branch taken."""

    def forward(self, images, mask, orig_sizes=None):
        logits, boxes = super().forward(images, mask)
        if bool(boxes.min() >= 0):  # always, for sigmoid boxes
            return logits, boxes
        return logits, boxes.clamp(min=0)


@pytest.mark.integration  # two attempts at tracing and a TorchScript export: ~15 s
def test_where_torch_export_cannot_trace_the_torchscript_exporter_steps_in(model, tmp_path):
    graph = BranchOnValue(model, None)
    with pytest.warns(UserWarning, match="the dynamo exporter failed"):
        used, reason, ranges = write_onnx(graph, str(tmp_path / "b.onnx"), "auto")
    assert used == "torchscript" and ranges == {}
    assert "data-dependent" in reason.lower() or "guard" in reason.lower(), reason
    images = torch.randn(1, 3, 72, 100)  # not the example's size
    out = OnnxDetector(tmp_path / "b.onnx")(images)
    with torch.no_grad():
        expected = model(images)
    torch.testing.assert_close(out["pred_logits"], expected["pred_logits"], rtol=0, atol=1e-4)
    with pytest.raises(Exception, match="(?i)data-dependent|guard"):  # asked for dynamo only
        write_onnx(graph, str(tmp_path / "c.onnx"), "dynamo")


def test_the_metadata_holds_strings_only(model):
    info = metadata(ExportGraph(model, 5), None, {2: "b", 1: "a"}, "torchvision", None)
    assert all(isinstance(v, str) for v in info.values())
    assert info["samdetr.categories"] == '[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]'
    assert info["samdetr.config"] == "null" and info["samdetr.num_top"] == "5"


def _detections(queries, labels, scores):
    n = len(queries)
    return {"queries": torch.tensor(queries), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores), "boxes": torch.arange(4 * n).float().view(n, 4)}


def test_detections_match_by_query_and_class_and_ties_may_swap():
    ours = _detections([0, 1, 2], [3, 1, 0], [0.9, 0.5, 0.5 - 1e-7])
    swapped = _detections([0, 2, 1], [3, 0, 1], [0.9, 0.5, 0.5 - 1e-7])
    swapped["boxes"] = ours["boxes"][[0, 2, 1]]
    found = compare_detections([ours], [swapped], num_classes=4, score_tolerance=1e-5)
    assert found["agreement"] == 1.0 and found["unexplained"] == 0
    assert not found["labels_in_order"] and found["boxes_max_abs_px"] == 0.0


def test_a_missing_detection_counts_unless_it_is_at_the_cut():
    ours = _detections([0, 1, 2], [3, 1, 0], [0.9, 0.6, 0.5])
    at_cut = _detections([0, 1, 3], [3, 1, 0], [0.9, 0.6, 0.5])
    found = compare_detections([ours], [at_cut], num_classes=4, score_tolerance=1e-5)
    assert found["agreement"] == pytest.approx(2 / 3) and found["unexplained"] == 0
    not_at_cut = _detections([0, 3, 2], [3, 1, 0], [0.9, 0.6, 0.5])
    found = compare_detections([ours], [not_at_cut], num_classes=4, score_tolerance=1e-5)
    assert found["unexplained"] == 1


def test_generated_images_are_normalised_seeded_and_sized():
    first = generated_images([(40, 60), (33, 80)], seed=2)
    assert [tuple(i.shape) for i in first] == [(3, 40, 60), (3, 33, 80)]
    assert all(torch.equal(a, b) for a, b in zip(first, generated_images([(40, 60), (33, 80)],
                                                                          seed=2), strict=True))
    assert not torch.equal(first[0], generated_images([(40, 60)], seed=3)[0])
    assert -2.2 < float(first[0].min()) and float(first[0].max()) < 2.7  # ImageNet-normalised
    with pytest.raises(ValueError, match="positive"):
        generated_images([(0, 10)])
