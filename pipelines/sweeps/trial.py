"""What one Tune trial of a sweep runs: an ordinary data-parallel training run.

Ray 2.60's pattern for Tune over Ray Train V2: a function trainable per trial builds and fits a
``TorchTrainer`` whose run config carries ``TuneReportCallback`` (every epoch's report becomes a
Tune result, which the scheduler reads). The Train run is named after the trial, so a trial that
Tune restarts (after the sweep's driver was killed) resumes from its latest checkpoint, and logs
into the same MLflow child run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipelines.sweeps.settings import SweepSettings, trial_settings
from pipelines.training.run import run_training
from samdetr.pretrained import PretrainedWeights


@dataclass(frozen=True)
class TrialJob:
    """What every trial shares, as plain data (it crosses into the trial's process):
    ``base``: the resolved ``TrainSettings.to_dict()``; ``sweep``: ``SweepSettings.to_dict()``;
    ``parent_run_id``: the sweep's MLflow run (None: tracking off)."""
    base: dict[str, Any]
    sweep: dict[str, Any]
    parent_run_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_trial(config: dict[str, Any], job: dict[str, Any],
                backbone: tuple[str | None, dict[str, Any] | None] = (None, None),
                pretrained: tuple[str | None, PretrainedWeights | None] = (None, None)) -> None:
    """Tune's function trainable: ``config`` is the trial's draw from the search space.
    ``backbone``: ``(model.backbone.weights, its state dict)`` as the sweep's driver read them
    (once, for every trial: Tune's object store carries them), used when the trial starts
    from those weights; ``pretrained``: the same for ``init.weights``."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial = TrialJob(**job)
    sweep = SweepSettings.from_dict(trial.sweep)
    trial_id = tune.get_context().get_trial_id()
    settings = trial_settings(trial.base, sweep, config, trial_id, trial.parent_run_id)
    name, state = backbone
    shared = state if settings.detector.model.backbone.weights == name else None
    init_name, weights = pretrained
    run_training(settings, callbacks=[TuneReportCallback()], backbone_state=shared,
                 pretrained=weights if settings.init.weights == init_name else None)
