"""The sweep's ASHA keeps its comparisons over a restart (its rungs refilled from the trials'
histories), and decides on epochs trained."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from ray.tune.schedulers import TrialScheduler  # noqa: E402

from pipelines.sweeps.scheduler import HISTORIES_FILE, SweepASHA  # noqa: E402


def _asha(folder) -> SweepASHA:
    return SweepASHA(str(folder), time_attr="epochs_done", max_t=4, grace_period=1,
                     reduction_factor=2, metric="AP", mode="max")


def _decide(asha: SweepASHA, trial_id: str, epochs_done: int, ap: float) -> str:
    trial = SimpleNamespace(trial_id=trial_id)
    if trial_id not in asha._trial_info:
        asha.on_trial_add(None, trial)
    return asha.on_trial_result(None, trial, {"epochs_done": epochs_done, "AP": ap})


def test_without_histories_the_first_trial_at_a_milestone_goes_on(tmp_path):
    asha = _asha(tmp_path)
    assert _decide(asha, "c", 1, 0.0) == TrialScheduler.CONTINUE
    assert _decide(asha, "d", 1, -1.0) == TrialScheduler.STOP  # below the one recorded


def test_a_restored_scheduler_compares_with_the_trials_before_the_restart(tmp_path):
    histories = {"a": [0.3, 0.5, 0.6, 0.7], "b": [0.2, 0.4]}  # finished, stopped at epoch 2
    (tmp_path / HISTORIES_FILE).write_text(json.dumps(histories))
    asha = pickle.loads(pickle.dumps(_asha(tmp_path)))  # as Tune restores it from tuner.pkl
    assert _decide(asha, "c", 1, 0.1) == TrialScheduler.STOP  # under the cut of 0.3 and 0.2
    rungs = {m: dict(r) for m, r in asha._brackets[0]._rungs}
    assert rungs == {4: {"a": 0.7}, 2: {"a": 0.5, "b": 0.4}, 1: {"a": 0.3, "b": 0.2, "c": 0.1}}
    # A trial that had passed epoch 1 before the restart is judged at its next milestone.
    assert _decide(asha, "a2", 2, 0.42) == TrialScheduler.STOP  # cut: 0.45
    assert _decide(asha, "a3", 2, 0.9) == TrialScheduler.CONTINUE


def test_the_loaded_flag_is_not_pickled(tmp_path):
    asha = _asha(tmp_path)
    _decide(asha, "x", 1, 0.1)
    assert asha._loaded and not pickle.loads(pickle.dumps(asha))._loaded
