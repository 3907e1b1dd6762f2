"""The multiscale model exported to ONNX (C3-C5, the deformable encoder's grid_sample reads,
decoder layers on different levels; dynamo exporter, post-processing in the graph) gives the
PyTorch model's outputs and top-100 detections at two image sizes, batch 1 and 2
(support/export_case.py states the tolerances). Its ExportedProgram: test_export_programs.py."""

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
def multiscale(tmp_path_factory):
    torch.manual_seed(0)
    # ResNet-18 up to layer4: three levels (strides 8, 16, 32) in the encoder; the two decoder
    # layers read the coarsest and the finest.
    config = tiny_config(num_classes=20, num_encoder_layers=1, multiscale=True,
                         decoder_levels=(2, 0))
    assert config.model.layer_levels == (2, 0)
    model = build_model(config).eval()
    folder = tmp_path_factory.mktemp("export-multiscale")
    return {"model": model,
            "onnx": export_model(model, folder / "ms.onnx", config=config, postprocess=True)}


def test_onnx_runtime_gives_the_model_s_outputs_and_detections(multiscale):
    assert multiscale["onnx"].exporter == "dynamo"
    check_runner(multiscale["model"], OnnxDetector(multiscale["onnx"].path), postprocessed=True)

