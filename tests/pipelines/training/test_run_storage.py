"""A run's and a sweep's files on storage (records, checkpoint folders, histories), read and
written the same on a local folder and on an S3-compatible object store."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("moto")

from support.s3_server import moto_s3  # noqa: E402

from pipelines.common.checkpoints import HISTORY_FILE  # noqa: E402
from pipelines.training.run_record import (  # noqa: E402
    RECORD_FILE,
    kept_checkpoints,
    list_runs,
    read_json,
    run_history,
    write_json,
)

BUCKET = "runs-test"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "storage")
        return
    with moto_s3(BUCKET):
        yield f"s3://{BUCKET}/storage"


def test_runs_records_checkpoints_and_histories(root):
    assert read_json(root, "sweep/sweep.json") is None and list_runs(f"{root}/sweep/runs") == []
    write_json(root, "sweep/sweep.json", {"parent_run_id": "p", "winner": None})
    assert read_json(root, "sweep/sweep.json") == {"parent_run_id": "p", "winner": None}
    runs = f"{root}/sweep/runs"
    history = [{"epoch": 0, "AP": 0.1}, {"epoch": 1, "AP": 0.3}, {"epoch": 2, "AP": 0.2}]
    for run in ("sweep-b_00001", "sweep-a_00000"):
        write_json(runs, f"{run}/{RECORD_FILE}", {"run_name": run})
    write_json(runs, f"sweep-a_00000/epoch_0002/{HISTORY_FILE}", history[:2])  # the best
    write_json(runs, f"sweep-a_00000/epoch_0003/{HISTORY_FILE}", history)  # the latest
    write_json(runs, "no-record/epoch_0001/x.json", {})  # not a run: no record
    assert list_runs(runs) == ["sweep-a_00000", "sweep-b_00001"]
    kept = kept_checkpoints(f"{runs}/sweep-a_00000")
    assert sorted(kept) == [1, 2] and kept[2] == f"{runs}/sweep-a_00000/epoch_0003"
    assert run_history(f"{runs}/sweep-a_00000") == history
    assert run_history(f"{runs}/sweep-b_00001") is None and kept_checkpoints(f"{runs}/x") == {}


def test_a_restored_asha_reads_its_histories_from_the_store(root):
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from pipelines.sweeps.scheduler import HISTORIES_FILE, SweepASHA

    write_json(f"{root}/sweep", HISTORIES_FILE, {"a": [0.5, 0.6], "b": [0.4]})
    asha = SweepASHA(f"{root}/sweep", time_attr="epochs_done", max_t=4, grace_period=1,
                     reduction_factor=2, metric="AP", mode="max")
    trial = SimpleNamespace(trial_id="c")
    asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, trial, {"epochs_done": 1, "AP": 0.1}) == \
        TrialScheduler.STOP
    assert json.dumps(read_json(f"{root}/sweep", HISTORIES_FILE), sort_keys=True) == \
        '{"a": [0.5, 0.6], "b": [0.4]}'
