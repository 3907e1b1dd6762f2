"""The convergence study: model variants x seeds on the same data and budget, one MLflow parent.

    python -m pipelines.study                                  # conf/study.yaml: ~45 min, 2 CPUs
    python -m pipelines.study study.seeds=[0] trainer.epochs=2 study.name=quick

Every (variant, seed) pair is one ordinary Ray Train run
(:func:`pipelines.training.run.run_training`)
of the same base config (``experiment=shapes_small`` by default) with the variant's ``model``
fields and ``trainer.seed`` changed, named ``<study.name>-<variant>-s<seed>`` and tracked as an
MLflow child of the study's parent run. The parent gets the per-epoch results (CSV), the plot and
the report; the report (``study.report``, e.g. ``docs/convergence.md``) is rewritten between its
markers, so a hand-written reading below them stays. Re-running the same command skips the
finished runs (``<storage>/<study.name>/study.json``) and resumes an interrupted one from its
checkpoint.
"""

from __future__ import annotations

from pipelines.cli.config_store import register_defaults, settings_dict
from pipelines.studies.run import StudySettings, run_study, study_fields
from pipelines.training.settings import TrainSettings


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    register_defaults()

    @hydra.main(version_base="1.3", config_path="../conf", config_name="study")
    def _run(cfg: DictConfig) -> None:
        plain = settings_dict(cfg)
        study = StudySettings(**study_fields(plain.pop("study")))
        base = TrainSettings.from_dict(plain)
        overrides = " ".join(HydraConfig.get().overrides.task)
        run_study(study, base, f"python -m pipelines.study {overrides}".strip())

    _run()


if __name__ == "__main__":
    main()
