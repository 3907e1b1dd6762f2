"""A real MLflow tracking server on 127.0.0.1 for integration tests (SQLite backend, artifacts
proxied by the server), which a test can stop and start again on the same port and store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` in its own process group; ``url`` stays the same across restarts.

    ``app_name`` (e.g. ``basic-auth``) is passed as ``--app-name``; ``env`` is added to the
    server's environment (the auth app reads its config path and secret key from there)."""

    def __init__(self, root: Path, *, app_name: str | None = None,
                 env: dict[str, str] | None = None):
        self.root = Path(root)
        self.app_name = app_name
        # MLflow 3's job runner (eight huey consumer processes, for GenAI jobs) is off: nothing
        # here uses it, and on two cores its start costs more CPU than the server's own.
        self.env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> MlflowServer:
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        if self.app_name is not None:
            command += ["--app-name", self.app_name]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server outlives this call
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log_text = (self.root / "server.log").read_text()
                raise RuntimeError(f"mlflow server exited: {log_text}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout_s}s")

    def stop(self) -> None:
        """Kill the server and its workers (a crash, not a clean shutdown)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.process = None
