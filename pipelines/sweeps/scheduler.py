"""ASHA for sweeps: early stopping on epochs trained, with its comparisons kept over a restart.

Tune restores a sweep's trials after its driver is killed, but not its scheduler's state: a
restored ASHA would compare the trials still running only with each other, and let a weak one
through that the trials finished before the restart would have stopped. So before restoring,
the driver writes every trial's metric per epoch (:data:`HISTORIES_FILE`, from the trials'
own checkpoints), and this scheduler fills its rungs from it before its first decision: each
trial's value at each milestone it reached, as ASHA had recorded it.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler

from pipelines.common.ray_internals import asha_brackets, asha_rungs, asha_sign
from pipelines.training.run_record import read_json

#: ``{trial id: [metric after epoch 1, 2, ...]}`` in the sweep's folder, written on restore.
HISTORIES_FILE = "asha_histories.json"


class SweepASHA(AsyncHyperBandScheduler):
    """``AsyncHyperBandScheduler`` whose rungs are refilled from ``<folder>/HISTORIES_FILE``
    (``folder``: the sweep's folder, local or a URI) when the sweep is restored."""

    def __init__(self, folder: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._folder = folder
        self._loaded = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_loaded"] = False  # a restored copy looks for the file again
        return state

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load()
        return super().on_trial_result(tune_controller, trial, result)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True

        histories = read_json(self._folder, HISTORIES_FILE) or {}
        fill_rungs(asha_brackets(self), histories, asha_sign(self))


def fill_rungs(brackets: list[Any], histories: dict[str, list[float]], sign: float) -> None:
    """Record each trial's value at every milestone it reached (ASHA records the first result
    at or past a milestone: epoch ``ceil(milestone)``), as ``sign * value``."""
    for bracket in brackets:
        for milestone, recorded in asha_rungs(bracket):
            epoch = math.ceil(milestone)
            for trial_id, values in histories.items():
                if len(values) >= epoch and trial_id not in recorded:
                    recorded[trial_id] = sign * float(values[epoch - 1])
