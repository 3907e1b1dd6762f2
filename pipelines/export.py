"""Export a registered model, a model version or a checkpoint to ONNX or a torch.export
ExportedProgram, and check that the file gives what the PyTorch model gives.

    python -m pipelines.export model_uri=models:/sam-detr@champion output=exports/champion.onnx
    python -m pipelines.export model_uri=models:/sam-detr/3 output=exports/v3.onnx \
        postprocess=true num_top=100
    python -m pipelines.export checkpoint=outputs/ray/shapes/epoch_0020 \
        format=exported_program output=exports/shapes.pt2

Writes ``output`` and, beside it, ``<output>.parity.json``: the exported model and the PyTorch
model on generated images at the model's eval size, alone and padded in pairs (largest
differences of logits and boxes, top-k agreement). Exit status 1 when parity fails (the file
stays, for a look). A model URI is looked up in the store ``tracking_uri`` (else
$MLFLOW_TRACKING_URI, else ./mlflow.db), and its export recorded there as an MLflow run holding
the file and its report (``record=false``: not). Needs the ``export`` extra (onnx, onnxscript,
onnxruntime) for ONNX.
"""

from __future__ import annotations

from pipelines.cli.config_store import register_defaults, settings_dict
from pipelines.inference.export import ExportSettings, format_export, run_export


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from samdetr.config import known_fields

    register_defaults()  # export_base, the node conf/export.yaml starts from

    @hydra.main(version_base="1.3", config_path="../conf", config_name="export")
    def _run(cfg: DictConfig) -> None:
        plain = settings_dict(cfg)
        try:
            settings = ExportSettings(**known_fields(ExportSettings, plain, "export"))
        except ValueError as err:  # a bad setting: a message, not a traceback
            print(f"[export] {err}", flush=True)
            raise SystemExit(2) from None
        summary = run_export(settings)
        print(format_export(summary), flush=True)
        if not summary["passed"]:
            raise SystemExit(1)

    _run()


if __name__ == "__main__":
    main()
