"""Ray Tune sweeps of SAM-DETR: every trial a data-parallel Ray Train run, early stopping by
ASHA, one MLflow parent run, and the winner registered with the alias ``challenger``.

    python -m pipelines.tune                                  # conf/tune.yaml: M x SMCA
    python -m pipelines.tune sweep=m_smca_lr sweep.num_samples=4 trainer.epochs=12
    python -m pipelines.tune experiment=sam_detr_r50_e12 data=coco2017 trainer=gpu \
        trainer.num_workers=4 sweep.max_concurrent_trials=2 trainer.storage_path=s3://b/ray \
        tracking.tracking_uri=http://mlflow:5000

The sweep lives under ``<trainer.storage_path>/<sweep.name>/``: Tune's experiment, ``sweep.json``
(the parent run and settings) and ``runs/<sweep.name>-<trial id>/`` (each trial's Train run).
Running the same command again restores it: finished trials are kept, unfinished ones resume
from their checkpoints, and changed settings are refused (choose another ``sweep.name``).
"""

from __future__ import annotations

from pipelines.cli.config_store import register_defaults, settings_dict
from pipelines.sweeps.run import run_sweep
from pipelines.sweeps.settings import SweepSettings
from pipelines.training.settings import TrainSettings


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    register_defaults()

    @hydra.main(version_base="1.3", config_path="../conf", config_name="tune")
    def _run(cfg: DictConfig) -> None:
        plain = settings_dict(cfg)
        sweep = SweepSettings.from_dict(plain.pop("sweep"))
        base = TrainSettings.from_dict(plain)
        run_sweep(sweep, base, OmegaConf.to_yaml(cfg, resolve=True))

    _run()


if __name__ == "__main__":
    main()
