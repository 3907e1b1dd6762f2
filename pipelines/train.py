"""Data-parallel SAM-DETR training on Ray Train, evaluated on COCO metrics, tracked in MLflow.

    python -m pipelines.train                                   # conf/train.yaml defaults
    python -m pipelines.train experiment=sam_detr_r50_e12 trainer.use_gpu=true \
        trainer.num_workers=4 tracking.tracking_uri=http://mlflow:5000
    python -m pipelines.train trainer.run_name=r50-a trainer.epochs=50   # resumes run r50-a

Re-running with the same ``trainer.run_name`` and ``trainer.storage_path`` continues from the
run's latest checkpoint and logs into the same MLflow run, whose id is kept beside the
checkpoints (:mod:`pipelines.training.run_record`); a config that would change the training is
refused.
Workers that die (or whose node goes away) are replaced and resume from the last checkpoint,
up to ``trainer.max_failures`` times. On a cluster of several nodes, local paths must be on
shared storage and tracking must use a server (:mod:`pipelines.training.preflight` checks both at
start).
"""

from __future__ import annotations

from pipelines.cli.config_store import register_defaults, settings_dict
from pipelines.training.run import format_summary, run_training
from pipelines.training.settings import TrainSettings


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    register_defaults()  # the <group>/base nodes conf/ starts from

    @hydra.main(version_base="1.3", config_path="../conf", config_name="train")
    def _run(cfg: DictConfig) -> None:
        settings = TrainSettings.from_dict(settings_dict(cfg))
        print(format_summary(run_training(settings, OmegaConf.to_yaml(cfg, resolve=True))))

    _run()


if __name__ == "__main__":
    main()
