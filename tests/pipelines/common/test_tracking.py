"""Rank 0's MLflow logger against a real tracking server that goes down and comes back: calls
return at once, the outage and its end are each said once (with the URI, the retry interval, the
calls sent late and after how long), urllib3's per-request retry warnings of the logger's thread
stay off the console meanwhile (other threads' do not), nothing is lost or logged twice, and the
counts reach the run's summary (a real training run through an outage)."""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from PIL import Image  # noqa: E402
from support.mlflow_server import MlflowServer  # noqa: E402

from pipelines.common.run_logger import RETRY_LOGGER, RunLogger, duration  # noqa: E402
from pipelines.common.tracking import create_run  # noqa: E402

# MLflow's HTTP client retries each request (urllib3 warns at each retry); quick retries here.
QUICK_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    running = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield running
    running.stop()


@pytest.fixture()
def server(shared_server, monkeypatch):
    """The module's server, running (a test may stop it)."""
    # A stopped server fails each call at once instead of after minutes of MLflow's retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    if shared_server.process is None:
        shared_server.start()
    return shared_server


def _steps(server: MlflowServer, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(server.url).get_metric_history(run_id, key))


def _until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _retry_warnings(records: list[logging.LogRecord], thread: int | None) -> int:
    return sum(1 for r in records if r.name == RETRY_LOGGER and r.thread == thread
               and r.getMessage().startswith("Retrying"))


def test_an_outage_is_said_once_and_its_end_with_what_was_sent_late(server, monkeypatch,
                                                                      caplog):
    for name, value in QUICK_RETRIES.items():
        monkeypatch.setenv(name, value)
    filters = list(logging.getLogger(RETRY_LOGGER).filters)
    run_id = create_run(server.url, "outage", "r", {"a": "1"}, "a: 1\n")
    said: list[str] = []
    logger = RunLogger(server.url, run_id, retry_after_s=0.3, warn=said.append)
    assert logger.last_step("m") == -1  # nothing logged yet
    for step in (1, 2):
        logger.log_metrics({"m": step / 10}, step)
    assert logger.flush(30)
    assert _steps(server, run_id, "m") == [1, 2]

    server.stop()
    start = time.monotonic()
    for step in (3, 4, 5):
        logger.log_metrics({"m": step / 10}, step)
    logger.log_image(Image.new("RGB", (8, 8)), "pictures/p.png")
    assert time.monotonic() - start < 2.0  # training never waits for the store
    _until(lambda: logger.failures >= 3)  # it kept trying
    assert not logger.flush(5)  # returns at once while the store fails
    down = [s for s in said if "unreachable" in s]
    # The cause's class depends on the moment the server went: a refused new connection, or a
    # pooled one reset.
    assert len(down) == 1 and re.fullmatch(
        re.escape(f"MLflow tracking server {server.url} is unreachable (") + r"\w+"
        + re.escape("): training goes on; its metrics and pictures are queued and sent again "
                    "every 0.3s until it answers"), down[0]), down
    # MLflow's per-request retries were warned in the logger's thread, and kept off the console;
    # another thread's are not (the project is not retrying those).
    assert _retry_warnings(caplog.records, logger._thread.ident) == 0
    with pytest.raises(Exception, match="Max retries exceeded|Connection refused"):
        MlflowClient(server.url).get_run(run_id)
    assert _retry_warnings(caplog.records, threading.get_ident()) == 2

    server.start()
    _until(lambda: logger.flush(1), 60)  # sent at the next retry after the server is back
    back = [s for s in said if "answers again" in s]
    assert len(back) == 1 and back[0].startswith(
        f"MLflow tracking server {server.url} answers again: sent the 4 logging call(s) "
        "queued during the ")
    assert len(said) == 2  # nothing else was said
    assert _steps(server, run_id, "m") == [1, 2, 3, 4, 5]  # each step once
    assert "pictures/p.png" in {a.path for a in
                                MlflowClient(server.url).list_artifacts(run_id, "pictures")}
    counts = logger.counts()
    assert {k: counts[k] for k in ("outages", "queued", "sent_late", "lost")} == {
        "outages": 1, "queued": 4, "sent_late": 4, "lost": 0}
    assert counts["failures"] == logger.failures >= 3 and counts["outage_s"] >= 5
    assert logger.last_step("m") == 5
    logger.close(5)
    assert logging.getLogger(RETRY_LOGGER).filters == filters  # not hidden for good


def test_a_full_queue_drops_and_a_close_while_down_counts_the_loss(server):
    run_id = create_run(server.url, "outage", "r", {}, "")
    said: list[str] = []
    logger = RunLogger(server.url, run_id, retry_after_s=0.2, max_pending=2, warn=said.append)
    server.stop()
    for step in range(5):
        logger.log_metrics({"m": 1.0}, step)
    assert logger.dropped >= 3
    assert logger.last_step("m") is None  # the store cannot tell
    start = time.monotonic()
    logger.close(1.0)
    assert time.monotonic() - start < 5
    counts = logger.counts()
    assert counts["lost"] == logger.dropped == 5 and counts["sent_late"] == 0
    assert counts["outages"] == 1 and 2 <= counts["queued"] <= 5
    assert [s for s in said if "could not be sent" in s] == [
        f"warning: 2 MLflow logging call(s) could not be sent to {server.url} and are lost"]


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (0.4, 42, 242, 3900)] == ["0s", "42s", "4m 02s", "1h 05m"]


@pytest.mark.slow
def test_a_training_run_through_an_outage_says_so_and_sums_it_up(tmp_path, monkeypatch, capfd):
    """``pipelines.train`` with its tracking server stopped after the first epoch and started
    again: training goes on, the worker says once that the server is unreachable and once that
    the queue went out, no urllib3 retry warning reaches the console, every metric arrives
    once, and the run's summary counts the calls queued, sent late and lost."""
    import json

    import ray
    from support.train_case import tiny_settings, train_in_background, write_shards

    from pipelines.training.run import format_summary
    from pipelines.training.run_record import RECORD_FILE

    for name, value in {**QUICK_RETRIES, "RAY_AUTH_MODE": "disabled"}.items():
        monkeypatch.setenv(name, value)  # before Ray starts: its workers inherit them
    server = MlflowServer(tmp_path / "mlflow").start()
    tracking = {"tracking_uri": server.url, "experiment": "outage", "retry_after_s": 0.5,
                "flush_timeout_s": 180.0, "log_model": False}
    plain = tiny_settings(write_shards(tmp_path, "train", 6, seed=0),
                          write_shards(tmp_path, "val", 2, seed=1), str(tmp_path / "ray"),
                          "outage", 4, tracking=tracking, num_workers=1, num_pictures=0)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    runner, outcome = train_in_background(plain)
    try:
        record = tmp_path / "ray" / "outage" / RECORD_FILE
        _until(record.is_file, 120)
        run_id = json.loads(record.read_text())["mlflow_run_id"]
        _until(lambda: MlflowClient(server.url).get_metric_history(run_id, "AP"), 300)
        server.stop()
        time.sleep(3)  # training goes on meanwhile
        server.start()
        runner.join(600)
        time.sleep(3)  # the workers' last lines reach this console
        console = capfd.readouterr()
    finally:
        ray.shutdown()
        server.stop()
    text = console.out + console.err
    assert "summary" in outcome, f"{outcome.get('error')!r}\n{text[-5000:]}"
    assert text.count(f"MLflow tracking server {server.url} is unreachable") == 1, text[-5000:]
    assert text.count(f"MLflow tracking server {server.url} answers again: sent the ") == 1
    assert "Retrying (" not in text
    queue = outcome["summary"]["tracking_queue"]
    assert queue is not None, "rank 0's training function returned no RunLogger.counts()"
    assert queue["outages"] == 1 and queue["lost"] == 0
    assert queue["sent_late"] == queue["queued"] >= 1
    assert (f"  MLflow: the tracking server was unreachable once ("
            f"{duration(queue['outage_s'])} in all): {queue['queued']} logging call(s) queued, "
            f"{queue['queued']} sent late, 0 lost; training was not affected"
            ) in format_summary(outcome["summary"])
    server.start()
    try:
        assert _steps(server, run_id, "AP") == [0, 1, 2, 3]  # each epoch once
        losses = _steps(server, run_id, "train/loss")
        assert losses == list(range(1, len(losses) + 1))  # each step once
    finally:
        server.stop()
