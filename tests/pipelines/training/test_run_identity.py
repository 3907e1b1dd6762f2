"""Where a run's paths point and which MLflow run it logs to: local paths are resolved once on the
driver; the MLflow run id is kept with the run's storage (a new storage location or a deleted
run folder is a new run); a resumed run with a changed config is refused unless allowed."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from support.train_case import tiny_settings  # noqa: E402

from pipelines.training.run import (  # noqa: E402
    open_tracking,
    previous_record,
    run_training,
    store_record,
)
from pipelines.training.run_record import (  # noqa: E402
    RECORD_FILE,
    config_differences,
    new_record,
    read_record,
    write_record,
)
from pipelines.training.settings import TrainSettings  # noqa: E402


def _settings(tmp_path, storage="ray", run_name="r", **tracking) -> TrainSettings:
    tracking = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "ids",
                **tracking}
    return TrainSettings.from_dict(
        tiny_settings("shards/train", "shards/val", str(tmp_path / storage), run_name, 2,
                      tracking=tracking)
    )


def test_relative_paths_are_resolved_against_the_drivers_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plain = tiny_settings("shards/train", "s3://bucket/val", "outputs/ray", "r", 1,
                          tracking={"artifact_location": "art"})
    resolved = TrainSettings.from_dict(plain).resolved()
    assert resolved.data.train_shards == str(tmp_path / "shards" / "train")
    assert resolved.data.val_shards == "s3://bucket/val"  # URIs stay as written
    assert resolved.trainer.storage_path == str(tmp_path / "outputs" / "ray")
    assert resolved.tracking.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolved.tracking.artifact_location == str(tmp_path / "art")
    assert resolved.resolved() == resolved  # once is enough
    assert resolved.local_paths() == {
        "data.train_shards": str(tmp_path / "shards" / "train"),
        "trainer.storage_path": str(tmp_path / "outputs" / "ray"),
    }
    # What the workers get: the resolved settings, unchanged by a trip through a dict.
    assert TrainSettings.from_dict(resolved.to_dict()) == resolved


def test_a_new_storage_location_or_a_deleted_run_folder_is_a_new_mlflow_run(tmp_path):
    first = _settings(tmp_path).resolved()
    run_id, uri = open_tracking(first, None, "")
    write_record(first.trainer.storage_path,
                 new_record("r", run_id, uri, first.to_dict(), None))
    # Resuming the same storage: the same MLflow run, found through the record.
    again, _ = open_tracking(first, previous_record(first), "")
    assert again == run_id
    # The same run name elsewhere: a new run, not an append to the old one's history.
    moved = _settings(tmp_path, storage="elsewhere").resolved()
    assert previous_record(moved) is None
    other, _ = open_tracking(moved, previous_record(moved), "")
    assert other != run_id
    # The run folder deleted: a new run too.
    shutil.rmtree(os.path.join(first.trainer.storage_path, "r"))
    fresh, _ = open_tracking(first, previous_record(first), "")
    assert fresh not in (run_id, other)
    client = MlflowClient(uri)
    names = {client.get_run(i).info.run_name for i in (run_id, other, fresh)}
    assert names == {"r"}


def test_a_record_naming_a_run_the_store_lacks_is_refused(tmp_path):
    settings = _settings(tmp_path).resolved()
    write_record(settings.trainer.storage_path,
                 new_record("r", "0123456789abcdef", "sqlite:///gone.db", settings.to_dict(), None))
    with pytest.raises(ValueError, match="does not hold"):
        open_tracking(settings, previous_record(settings), "")


def test_resume_with_a_changed_config_is_refused_with_the_differences(tmp_path):
    stored = _settings(tmp_path).resolved()
    write_record(stored.trainer.storage_path,
                 new_record("r", None, None, stored.to_dict(), None))
    plain = stored.to_dict()
    plain["optim"]["lr"] = 1e-3
    plain["model"]["num_queries"] = 16
    plain["trainer"]["epochs"] = 9  # free to change, as are paths and logging
    plain["trainer"]["log_every"] = 3
    plain["data"]["val_shards"] = str(tmp_path / "other")
    plain["tracking"]["experiment"] = "renamed"
    with pytest.raises(ValueError) as refused:
        run_training(TrainSettings.from_dict(plain))  # before Ray or MLflow are touched
    message = str(refused.value)
    assert "optim.lr: 0.0002 -> 0.001" in message and "model.num_queries: 8 -> 16" in message
    assert "epochs" not in message.split("would change the training")[1].split("Run with")[0]
    assert "trainer.allow_config_change=true" in message
    # Accepted when asked for; the record then holds the new settings.
    plain["trainer"]["allow_config_change"] = True
    accepted = TrainSettings.from_dict(plain)
    assert previous_record(accepted) is not None


def test_config_differences_ignore_what_does_not_change_the_training():
    base = TrainSettings.from_dict(tiny_settings("a", "b", "c", "r", 1)).to_dict()
    changed = TrainSettings.from_dict(tiny_settings(
        "x", "y", "s3://z/ray", "r", 7, tracking={"tracking_uri": "http://h:5000"},
        ray_address="auto", worker_resources={"node:a": 1}, max_failures=9, num_pictures=0,
    )).to_dict()
    assert config_differences(base, changed) == []
    changed["trainer"]["num_workers"] = 4
    changed["data"]["batch_size"] = 1
    assert config_differences(base, changed) == [
        "data.batch_size: 3 -> 1", "trainer.num_workers: 2 -> 4",
    ]


def test_a_record_from_before_a_setting_existed_resumes_on_its_default():
    current = TrainSettings.from_dict(tiny_settings("a", "b", "c", "r", 1)).to_dict()
    older = TrainSettings.from_dict(tiny_settings("a", "b", "c", "r", 1)).to_dict()
    for key in ("schedule", "warmup_steps", "warmup_start", "min_lr_ratio", "freeze",
                "lr_groups"):
        del older["optim"][key]
    del older["init"]
    assert config_differences(older, current) == []
    current["optim"]["schedule"] = "cosine"  # but a change from that default is one
    assert config_differences(older, current) == ["optim.schedule: step -> cosine"]


def test_record_round_trip_and_a_foreign_file(tmp_path):
    settings = _settings(tmp_path).resolved()
    record = new_record("r", "abc", "sqlite:///x.db", settings.to_dict(), None)
    write_record(str(tmp_path / "store"), record)
    assert read_record(str(tmp_path / "store"), "r") == record
    later = new_record("r", "abc", "sqlite:///x.db", settings.to_dict(), record)
    assert later.created == record.created
    (tmp_path / "store" / "q").mkdir()
    (tmp_path / "store" / "q" / RECORD_FILE).write_text('{"something": "else"}')
    with pytest.raises(ValueError, match="is not a run record"):
        read_record(str(tmp_path / "store"), "q")


def test_a_start_without_tracking_keeps_the_stored_mlflow_run(tmp_path):
    tracked = _settings(tmp_path).resolved()
    run_id, uri = open_tracking(tracked, None, "")
    store_record(tracked, None, run_id, uri)
    untracked = TrainSettings.from_dict({**tracked.to_dict(), "tracking": {"enabled": False}})
    assert open_tracking(untracked, previous_record(untracked), "") == (None, None)
    store_record(untracked, previous_record(untracked), None, None)
    assert previous_record(tracked).mlflow_run_id == run_id  # a later tracked start goes on
    assert open_tracking(tracked, previous_record(tracked), "")[0] == run_id
