"""Rank 0's MLflow logger against a real tracking server that goes down and comes back: calls
return at once, the failure is reported once, nothing is lost or logged twice."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_server import MlflowServer  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.tracking import RunLogger, create_run  # noqa: E402


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


def test_logger_keeps_what_a_stopped_server_refused_and_sends_it_once_back(server):
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
    assert len([s for s in said if "failed" in s]) == 1  # reported once

    server.start()
    _until(lambda: logger.flush(1), 60)  # sent at the next retry after the server is back
    assert _steps(server, run_id, "m") == [1, 2, 3, 4, 5]  # each step once
    assert "pictures/p.png" in {a.path for a in
                                MlflowClient(server.url).list_artifacts(run_id, "pictures")}
    assert any("answers again" in s for s in said)
    assert logger.last_step("m") == 5 and logger.dropped == 0
    logger.close(5)


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
    assert logger.dropped == 5
    assert any("could not be sent" in s for s in said)
