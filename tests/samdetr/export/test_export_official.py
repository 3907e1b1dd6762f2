"""The official code's weights exported: the ``official-tiny`` fixture's base model (ResNet-50,
30 queries, 91 classes) loaded through the official-checkpoint converter, exported to ONNX with
the post-processing in the graph, gives the PyTorch model's outputs and top-100 detections
(support/export_case.py states the tolerances), and on the fixture's own inputs the numbers the
official implementation computed, within the tolerances the PyTorch model is held to
(tests/samdetr/test_official_fixture.py)."""

from __future__ import annotations

import pytest
import torch
from support.export_case import check_runner
from torch.testing import assert_close

from samdetr.batching import pad_images
from samdetr.export.exporter import export_model
from samdetr.export.runtime import OnnxDetector
from samdetr.official import model_from_official_state
from samdetr.official_fixture import inputs, official_args, official_state_dict, reference

pytestmark = pytest.mark.integration  # exports take tens of seconds


@pytest.fixture(scope="module")
def official(official_tiny_dir, tmp_path_factory):
    model, config = model_from_official_state(official_state_dict(official_tiny_dir, "base"),
                                              official_args(official_tiny_dir, "base"))
    model.eval()
    path = tmp_path_factory.mktemp("export-official") / "official.onnx"
    result = export_model(model, path, config=config, postprocess=True)
    return {"model": model, "result": result, "detector": OnnxDetector(result.path)}


def test_onnx_runtime_gives_the_model_s_outputs_and_detections(official):
    assert official["result"].exporter == "dynamo"
    check_runner(official["model"], official["detector"], postprocessed=True)


def test_onnx_runtime_gives_the_official_code_s_numbers(official, official_tiny_dir):
    data = inputs(official_tiny_dir)
    images, mask = pad_images(list(data["images"]))
    out = official["detector"](images, mask, data["orig_sizes"])
    ref = reference(official_tiny_dir, "base")
    assert_close(out["pred_logits"], ref["pred_logits"], rtol=1e-5, atol=5e-5)
    assert_close(out["pred_boxes"], ref["pred_boxes"], rtol=1e-5, atol=1e-5)
    for i, theirs in enumerate(ref["postprocess_top100"]):
        assert torch.equal(out["labels"][i], theirs["labels"])
        assert_close(out["scores"][i], theirs["scores"], rtol=1e-5, atol=1e-6)
        assert_close(out["boxes"][i], theirs["boxes"], rtol=1e-5, atol=3e-4)
