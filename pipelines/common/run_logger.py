"""Rank 0's MLflow logger inside a Ray Train worker: every call returns at once and a background
thread sends, in order; while the store is down the calls are queued and sent again later, and the
console hears of the outage once, then of its end (:class:`RunLogger`). The driver's side of
tracking (runs, stores, the reachability check) is :mod:`pipelines.common.tracking`.
"""

from __future__ import annotations

import collections
import io
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

#: The logger of urllib3's per-request retry warnings ("Retrying (...) after connection broken
#: by ..."), which MLflow's HTTP client triggers for every request to a server that is down.
RETRY_LOGGER = "urllib3.connectionpool"


def duration(seconds: float) -> str:
    """``42s``, ``4m 02s``, ``1h 05m``: how long an outage lasted, for the console."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


class _RetryWarnings(logging.Filter):
    """Keeps urllib3's "Retrying ..." warnings of one thread (a :class:`RunLogger`'s sender) off
    the console and hands each to ``on_retry`` (the logger's own outage message covers them);
    every other thread's warnings pass."""

    def __init__(self, thread_id: int | None, on_retry: Callable[[str], None]):
        super().__init__()
        self.thread_id = thread_id
        self.on_retry = on_retry

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread_id or not str(record.msg).startswith("Retrying"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        self.on_retry(type(args[1]).__name__ if len(args) > 1 else "no answer")
        return False


class RunLogger:
    """Rank 0's handle on the MLflow run: metrics in batches, pictures, plots.

    Calls return at once; a background thread sends, in order. When the store stops answering
    (a call fails, or MLflow's HTTP client starts retrying one), ``warn`` says so once per
    outage, with the URI and the retry interval; the calls made meanwhile are queued (at most
    ``max_pending``; beyond that they are dropped) and sent again every ``retry_after_s``
    seconds; once the queue is sent, ``warn`` says how many calls went late and after how long.
    urllib3's per-request "Retrying" warnings of the sending thread stay off the console while
    the logger exists (other threads' still show). :meth:`counts` gives the totals for the run's
    summary.
    """

    def __init__(self, uri: str, run_id: str, retry_after_s: float = 30.0,
                 max_pending: int = 10_000, warn: Callable[[str], None] = print):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.retry_after_s = retry_after_s
        self.max_pending = max_pending
        self.failures = 0  # failed calls to the store
        self.dropped = 0  # calls never sent: refused by a full queue, or unsent at close
        self.queued = 0  # calls held back by an outage
        self.sent_late = 0  # ... and sent once the store answered again
        self.outages = 0
        self._outage_s = 0.0  # the length of the outages that ended
        self._warn = warn
        self._pending: collections.deque = collections.deque()  # (number, item)
        self._cond = threading.Condition()
        self._number = 0  # of the last call queued
        self._held_until = 0  # calls numbered up to this were held back by an outage
        self._down_since: float | None = None  # the current outage's start (None: no outage)
        self._held_now = 0  # calls held back by the current outage
        self._failing = False  # the last try failed
        self._deadline: float | None = None  # set by close(): give up retrying after it
        self._thread = threading.Thread(target=self._work, name="samdetr-mlflow", daemon=True)
        self._thread.start()
        self._retries = _RetryWarnings(self._thread.ident, self._outage)
        logging.getLogger(RETRY_LOGGER).addFilter(self._retries)

    def last_step(self, key: str) -> int | None:
        """The largest step logged for metric ``key``: -1 when none is, None when the store
        cannot tell (it failed)."""
        try:
            steps = [m.step for m in self.client.get_metric_history(self.run_id, key)]
        except Exception as err:  # noqa: BLE001 - tracking must not stop training
            self._note_failure(err)
            return None
        return max(steps, default=-1)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self._put(("metrics", {k: float(v) for k, v in values.items()}, int(step),
                   int(time.time() * 1000)))

    def log_image(self, image: Any, artifact_file: str) -> None:
        """A PIL image as an artifact (format from the file name, e.g. ``.png``)."""
        self._put(("image", image.copy(), artifact_file))

    def log_table(self, columns: dict[str, list[Any]], artifact_file: str) -> None:
        """Columns of equal length as an MLflow table artifact (``.json``: the UI shows it as a
        table)."""
        self._put(("table", {k: list(v) for k, v in columns.items()}, artifact_file))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as an image artifact (drawn here, sent in the background)."""
        from PIL import Image

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        buffer.seek(0)
        self.log_image(Image.open(buffer), artifact_file)

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued is sent; returns at once while the store fails."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while self._pending and not self._failing:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return not self._pending

    def close(self, timeout_s: float) -> None:
        """Send what is queued (trying for at most ``timeout_s``), then stop the thread; what
        is still unsent is lost (counted, and said)."""
        with self._cond:
            self._deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._thread.join(timeout_s + 1.0)
        logging.getLogger(RETRY_LOGGER).removeFilter(self._retries)
        with self._cond:
            left = len(self._pending)
            self._pending.clear()
            self.dropped += left
            if self._down_since is not None:
                self._outage_s += time.monotonic() - self._down_since
                self._down_since = None
        if left:
            self._warn(f"warning: {left} MLflow logging call(s) could not be sent to {self.uri} "
                       "and are lost")

    def counts(self) -> dict[str, Any]:
        """The logger's totals: ``outages``, ``outage_s`` (their length), ``queued`` (calls
        held back by them), ``sent_late``, ``lost`` (never sent) and ``failures`` (failed
        calls to the store)."""
        with self._cond:
            ongoing = 0.0 if self._down_since is None else time.monotonic() - self._down_since
            return {"outages": self.outages, "outage_s": round(self._outage_s + ongoing, 1),
                    "queued": self.queued, "sent_late": self.sent_late, "lost": self.dropped,
                    "failures": self.failures}

    def _put(self, item: tuple) -> None:
        with self._cond:
            self._number += 1
            held = self._failing
            if held:
                self.queued += 1
                self._held_now += 1
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending.append((self._number, item))
            if held:
                self._held_until = self._number
            self._cond.notify_all()

    def _send(self, item: tuple) -> None:
        from mlflow.entities import Metric

        if item[0] == "metrics":
            _, values, step, stamp = item
            metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
            self.client.log_batch(self.run_id, metrics=metrics)
        elif item[0] == "table":
            _, columns, artifact_file = item
            self.client.log_table(self.run_id, data=columns, artifact_file=artifact_file)
        else:
            _, image, artifact_file = item
            self.client.log_image(self.run_id, image, artifact_file)

    def _note_failure(self, err: BaseException) -> None:
        with self._cond:
            self.failures += 1
        self._outage(type(err).__name__)

    def _outage(self, reason: str) -> None:
        """The store does not answer: hold back what is queued; say so if the outage is new."""
        with self._cond:
            self._failing = True
            new = self._down_since is None
            if new:
                self.outages += 1
                self._down_since = time.monotonic()
                self._held_now = 0
            unheld = [number for number, _ in self._pending if number > self._held_until]
            self.queued += len(unheld)
            self._held_now += len(unheld)
            self._held_until = max([self._held_until, *unheld])
            self._cond.notify_all()
        if new:
            self._warn(f"MLflow tracking server {self.uri} is unreachable ({reason}): training "
                       "goes on; its metrics and pictures are queued and sent again every "
                       f"{self.retry_after_s:g}s until it answers")

    def _sent(self, number: int) -> None:
        """Call ``number`` reached the store; say so once the calls held back are all sent."""
        with self._cond:
            if self._pending and self._pending[0][0] == number:
                self._pending.popleft()
            if number <= self._held_until:
                self.sent_late += 1
            self._failing = False
            flushed = self._down_since is not None and number >= self._held_until
            if flushed:
                seconds = time.monotonic() - self._down_since
                self._outage_s += seconds
                self._down_since = None
                held = self._held_now
            self._cond.notify_all()
        if flushed:
            self._warn(self._back(held, seconds))

    def _back(self, held: int, seconds: float) -> str:
        """The console line of an outage's end."""
        if not held:
            return (f"MLflow tracking server {self.uri} answers again after "
                    f"{duration(seconds)} (nothing was queued meanwhile)")
        return (f"MLflow tracking server {self.uri} answers again: sent the {held} logging "
                f"call(s) queued during the {duration(seconds)} outage")

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and self._deadline is None:
                    self._cond.wait()
                if not self._pending:
                    return
                number, item = self._pending[0]
            try:
                self._send(item)
            except Exception as err:  # noqa: BLE001 - tracking must not stop training
                self._note_failure(err)
                with self._cond:
                    if self._deadline is not None and time.monotonic() >= self._deadline:
                        return
                    wait = self.retry_after_s
                    if self._deadline is not None:
                        wait = min(wait, max(0.0, self._deadline - time.monotonic()))
                    self._cond.wait(wait)
                continue
            self._sent(number)
