"""The SMCA and the multiscale model as torch.export ExportedPrograms (``format=
exported_program``), with and without post-processing, give the PyTorch model's outputs and
top-100 detections at two image sizes, batch 1 and 2 (support/export_case.py states the
tolerances). The single-scale one: test_export_single.py."""

from __future__ import annotations

import pytest
import torch
from support.export_case import check_runner
from support.tiny import tiny_config

from samdetr.builder import build_model
from samdetr.export.exporter import export_model
from samdetr.export.runtime import ExportedProgramDetector

pytestmark = pytest.mark.integration  # exports take tens of seconds

VARIANTS = {
    "smca": dict(smca=True),
    # Three levels in the encoder; the two decoder layers read the coarsest and the finest.
    "multiscale": dict(multiscale=True, decoder_levels=(2, 0)),
}


@pytest.mark.parametrize("variant, postprocess", [("smca", True), ("multiscale", False)])
def test_the_exported_program_gives_the_model_s_outputs_and_detections(variant, postprocess,
                                                                        tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_classes=20, num_encoder_layers=1, **VARIANTS[variant])
    model = build_model(config).eval()
    result = export_model(model, tmp_path / f"{variant}.pt2", format="exported_program",
                          config=config, postprocess=postprocess)
    assert result.exporter == "torch.export" and result.input_ranges["batch"] == [1, None]
    check_runner(model, ExportedProgramDetector(result.path), postprocessed=postprocess)
