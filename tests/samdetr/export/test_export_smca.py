"""The SMCA model exported: ONNX (dynamo exporter, post-processing in the graph) gives the
PyTorch model's outputs and top-100 detections at two image sizes, batch 1 and 2
(support/export_case.py states the tolerances). (ExportedPrograms: test_export_single.py and
test_export_multiscale.py.)"""

from __future__ import annotations

import pytest
import torch
from support.export_case import check_runner
from support.tiny import tiny_config

from samdetr.builder import build_model
from samdetr.export.exporter import export_model
from samdetr.export.runtime import OnnxDetector

pytestmark = pytest.mark.integration  # exports take tens of seconds


@pytest.fixture(scope="module")
def smca(tmp_path_factory):
    torch.manual_seed(0)
    config = tiny_config(num_classes=20, num_encoder_layers=1, smca=True)
    model = build_model(config).eval()
    # The point head's last layer starts at zero, so every salient point would sit on its box
    # centre with unit SMCA scales; other weights move the points and scales as training does.
    for layer in model.transformer.decoder.layers:
        torch.nn.init.normal_(layer.aligner.point_mlp[-1].weight, std=0.05)
    folder = tmp_path_factory.mktemp("export-smca")
    return {"model": model,
            "onnx": export_model(model, folder / "smca.onnx", config=config, postprocess=True)}


def test_onnx_runtime_gives_the_model_s_outputs_and_detections(smca):
    assert smca["onnx"].exporter == "dynamo"
    check_runner(smca["model"], OnnxDetector(smca["onnx"].path), postprocessed=True)

