"""A submission made while Ray's job server has no job agent yet (a head that has just started)
is tried again until one registers; any other error is not retried."""

from __future__ import annotations

import pytest

from pipelines.jobs.client import NO_AGENT, _while_no_agent


def _flaky(failures: list[Exception]):
    calls = []

    def send() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "raysubmit_1"

    return send, calls


def test_no_agent_yet_is_waited_for(capsys):
    error = RuntimeError(f"Request failed with status code 500: {NO_AGENT}, please try again "
                         "later..")
    send, calls = _flaky([error, error])
    assert _while_no_agent(send, wait_s=5, every_s=0.01) == "raysubmit_1"
    assert len(calls) == 3
    assert capsys.readouterr().out.count("has no job agent yet") == 1


def test_other_errors_are_not_retried():
    send, calls = _flaky([RuntimeError("Request failed with status code 400: bad entrypoint")])
    with pytest.raises(RuntimeError, match="bad entrypoint"):
        _while_no_agent(send, wait_s=5, every_s=0.01)
    assert len(calls) == 1


def test_the_wait_is_bounded():
    send, calls = _flaky([RuntimeError(NO_AGENT)] * 1000)
    with pytest.raises(RuntimeError, match=NO_AGENT):
        _while_no_agent(send, wait_s=0.05, every_s=0.01)
    assert 1 < len(calls) < 1000
