"""The trainer of a run is built in one place: its run config and what crosses into workers."""

from __future__ import annotations

import pytest
from support.train_case import tiny_settings

from pipelines.training.job import TrainJob
from pipelines.training.settings import TrainSettings
from pipelines.training.trainer import build_trainer, run_config


@pytest.fixture
def settings(tmp_path) -> TrainSettings:
    plain = tiny_settings(str(tmp_path / "t"), str(tmp_path / "v"), str(tmp_path / "ray"),
                          "trainer-test", epochs=2)
    return TrainSettings.from_dict(plain).resolved()


def test_the_job_round_trips_through_the_loop_config(settings):
    job = TrainJob("abc", "http://mlflow:5000", [{"id": 1, "name": "a"}], "clock-x")
    config = job.loop_config(settings)
    assert TrainSettings.from_dict(config["settings"]) == settings
    assert TrainJob(**{k: v for k, v in config.items() if k != "settings"}) == job
    assert len(job.fit_id) == 32 and TrainJob(None, None, [], "c").fit_id != job.fit_id


def test_run_config_names_the_run_and_carries_extra_callbacks(settings):
    from ray.train import UserCallback

    class Seen(UserCallback):
        pass

    config = run_config(settings, callbacks=[Seen()])
    assert config.name == "trainer-test"
    assert config.storage_path == settings.trainer.storage_path
    assert config.failure_config.max_failures == settings.trainer.max_failures
    assert config.checkpoint_config.checkpoint_score_attribute == "AP"
    assert [type(c).__name__ for c in config.callbacks] == ["Seen"]


def test_callbacks_and_a_whole_run_config_are_not_both_taken(settings):
    job = TrainJob(None, None, [], "clock")
    with pytest.raises(ValueError, match="callbacks inside the run config"):
        build_trainer(settings, job, callbacks=[object()], config=run_config(settings))


def test_a_restart_without_a_checkpoint_does_not_log_an_epoch_twice(tmp_path):
    # A run stopped after logging epoch 0 but before Ray Train registered its checkpoint
    # trains epoch 0 again; what MLflow already holds is not logged again.
    from pipelines.common.run_logger import RunLogger
    from pipelines.common.tracking import create_run
    from pipelines.training.loop import _progress

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = create_run(uri, "tests", "restart", {}, "")
    first = RunLogger(uri, run_id)
    first.log_metrics({"train/loss": 3.0}, 1)
    first.log_metrics({"train/loss": 2.5}, 2)
    first.log_metrics({"loss": 2.7, "AP": 0.01}, 0)
    first.close(30)
    again = RunLogger(uri, run_id)
    progress = _progress(None, again)
    assert (progress.start_epoch, progress.logged_epoch, progress.logged_step) == (0, 0, 2)
    again.close(30)
    fresh = RunLogger(uri, create_run(uri, "tests", "fresh", {}, ""))
    assert (_progress(None, fresh).logged_epoch, _progress(None, fresh).logged_step) == (-1, -1)
    fresh.close(30)


def test_the_epoch_line_names_the_later_of_equal_best_epochs():
    """As Ray Train ranks checkpoints of equal score (the later is kept, summarised and
    registered), so the worker's line names the later epoch."""
    from pipelines.training.epoch_report import epoch_line

    metrics = {"loss": 1.0, "AP": 0.25, "AP50": 0.5, "images_per_s": 2.0,
               "first_batch_s": 0.1, "data_wait_share": 0.0, "epoch_time_s": 9.0}
    history = [{"epoch": 0, "AP": 0.1}, {"epoch": 1, "AP": 0.25}, {"epoch": 2, "AP": 0.25}]
    assert "(best AP 0.2500, epoch 3)" in epoch_line(2, 4, metrics, history)
