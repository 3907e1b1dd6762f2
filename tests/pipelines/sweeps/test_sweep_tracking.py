"""A stopped trial's run gets the epochs its checkpoint holds but it never logged."""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines.common.tracking import create_run  # noqa: E402
from pipelines.sweeps.tracking import log_missed_epochs  # noqa: E402

CLASSES = [{"category_id": 1, "name": "disc", "num_gt": 3, "AP": 0.5, "AP50": 0.75},
           {"category_id": 2, "name": "square", "num_gt": 0, "AP": -1.0, "AP50": -1.0}]


def _entry(epoch: int, ap: float) -> dict:
    return {"epoch": epoch, "AP": ap, "AP50": 2 * ap, "loss": 3.0 - epoch, "classes": CLASSES}


def test_only_the_epochs_the_run_lacks_are_logged_with_their_class_numbers(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = create_run(uri, "tests", "trial", {}, "")
    client = MlflowClient(uri)
    client.log_metric(run_id, "loss", 3.0, step=0)
    client.log_metric(run_id, "AP", 0.1, step=0)
    history = [_entry(0, 0.1), _entry(1, 0.2), _entry(2, 0.3)]
    log_missed_epochs(client, run_id, history)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "AP")] == [
        (0, 0.1), (1, 0.2), (2, 0.3)]
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [0, 1, 2]
    assert sorted(m.step for m in client.get_metric_history(run_id, "AP/disc")) == [1, 2]
    assert client.get_metric_history(run_id, "AP/square") == []  # no ground truth: no number
    log_missed_epochs(client, run_id, history)  # nothing missing now: nothing twice
    assert len(client.get_metric_history(run_id, "AP")) == 3


def test_a_run_without_a_checkpoint_history_is_left_as_it_is(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = create_run(uri, "tests", "trial", {}, "")
    client = MlflowClient(uri)
    log_missed_epochs(client, run_id, [])
    assert client.get_run(run_id).data.metrics == {}
