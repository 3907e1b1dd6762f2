"""Score a checkpoint or an MLflow model on a shard set with COCO metrics.

    python -m pipelines.evaluate checkpoint=outputs/ray/demo/epoch_0006 \
        shards=outputs/shards/synthetic/val
    python -m pipelines.evaluate model_uri=models:/sam-detr@candidate shards=... \
        tracking_uri=http://mlflow:5000 mlflow_experiment=samdetr-evaluation

A checkpoint (a ``checkpoint.pt`` file or a Ray Train checkpoint folder holding one, local or at
a URI such as ``s3://bucket/ray/run/epoch_0006``) is scored
with the same input pipeline and inference code as the per-epoch evaluation in training, so it
gives the numbers that were reported. An MLflow model goes through its own ``predict`` (encoded
image bytes in, detections out), as a deployed model would; it is looked up, downloaded and its
score recorded in one store: ``tracking_uri``, else $MLFLOW_TRACKING_URI, else ./mlflow.db.
"""

from __future__ import annotations

import sys

from pipelines.cli.config_store import settings_dict
from pipelines.inference.evaluate import EvaluateSettings, format_metrics, run_evaluate
from pipelines.registry.evaluation_record import refuse_experiment_override


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    try:
        refuse_experiment_override(sys.argv[1:], "evaluate")
    except ValueError as err:
        print(f"[evaluate] {err}", flush=True)
        raise SystemExit(2) from None

    @hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
    def _run(cfg: DictConfig) -> None:
        plain = settings_dict(cfg)  # without output_root
        print(format_metrics(run_evaluate(EvaluateSettings(**plain))))

    _run()


if __name__ == "__main__":
    main()
