"""python -m pipelines.submit against a real Ray head started by the test (`ray start --head`,
token authentication on): a tiny preprocess and training sent as jobs, their logs streamed
back, the exit status of a job that succeeds and of one that fails, the job commands, a
client without the token refused."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from support.mlflow_server import free_port

from pipelines.data.shapes import SHAPES
from samdetr.data.synthetic import make_synthetic_coco, write_synthetic_shards

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("submit")
    token = secrets.token_hex(16)
    # The head (and the jobs it runs) use this environment: this venv first on PATH.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]])}
    env.pop("RAY_ADDRESS", None)
    port, dashboard, agent = free_port(), free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths are capped
    # The job agent's port is fixed by default (52365): a Ray that another test process started
    # on this machine may hold it, and then this head has no job agent and refuses every job.
    started = subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}",
         f"--dashboard-agent-listen-port={agent}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    address = f"http://127.0.0.1:{dashboard}"
    try:
        yield {"root": root, "address": address, "env": env, "token": token}
    finally:
        _stop_node(temp)
        with pytest.raises(OSError):  # the job server is gone
            urllib.request.urlopen(address, timeout=5)


def _stop_node(temp: str, timeout_s: float = 60.0) -> None:
    """Stop the processes of the node whose ``--temp-dir`` is ``temp`` (each names its session
    folder there on its command line), and only those: ``ray stop`` would stop every Ray on the
    machine, and other test processes run theirs beside this one."""
    def ours() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                words = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:  # gone, or not a process folder
                continue
            if proc.name.isdigit() and any(temp.encode() in word for word in words):
                pids.append(int(proc.name))
        return pids

    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        for pid in ours():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while ours() and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not ours(), f"processes of the Ray node in {temp} outlived SIGKILL"


def _submit(head, *words, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipelines.submit", f"address={head['address']}", *words]
    return subprocess.run(command, cwd=ROOT, env=env or head["env"], capture_output=True,
                          text=True, timeout=600)


def test_jobs_run_stream_their_logs_and_return_their_status(head):
    root = head["root"]
    make_synthetic_coco(root / "data", 8, seed=0, **SHAPES)
    write_synthetic_shards(root / "val_data", root / "shards/val", 4, seed=1, **SHAPES)
    done = _submit(head, "submission_id=prep-1", "preprocess", "data=synthetic",
                   f"data.annotations={root / 'data/annotations.json'}",
                   f"data.images={root / 'data/images'}", f"output={root / 'shards/train'}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[submit] submitted prep-1" in done.stdout
    assert "images          8   kept 8" in done.stdout  # the job's own lines, streamed back
    assert "[submit] prep-1 SUCCEEDED" in done.stdout
    assert (root / "shards/train/manifest.json").is_file()

    done = _submit(head, "train", "experiment=shapes_small", "trainer.epochs=1",
                   "trainer.num_workers=1", "trainer.num_pictures=0",
                   "data.eval_loader_workers=0", f"data.train_shards={root / 'shards/train'}",
                   f"data.val_shards={root / 'shards/val'}", "trainer.run_name=submitted",
                   f"trainer.storage_path={root / 'ray'}",
                   f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
                   f"tracking.artifact_location={root / 'artifacts'}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[samdetr] epoch 1/1" in done.stdout and "SUCCEEDED" in done.stdout
    assert (root / "ray/submitted/epoch_0001/checkpoint.pt").is_file()

    failed = _submit(head, "submission_id=bad-1", "evaluate", f"shards={root / 'missing'}",
                     f"checkpoint={root / 'missing.pt'}")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "[submit] bad-1 FAILED" in failed.stdout

    listed = _submit(head, "list")
    assert listed.returncode == 0 and "prep-1" in listed.stdout and "bad-1" in listed.stdout
    status = _submit(head, "status", "prep-1")
    assert status.returncode == 0 and "prep-1 SUCCEEDED" in status.stdout


def test_a_job_can_be_left_running_and_stopped(head):
    done = _submit(head, "wait=false", "submission_id=long-1", "make_synthetic",
                   f"out_dir={head['root'] / 'many'}", "num_images=100000")
    assert done.returncode == 0 and "follow it with" in done.stdout
    stopped = _submit(head, "stop", "long-1")
    assert stopped.returncode == 0 and "stop requested" in stopped.stdout
    followed = _submit(head, "logs", "long-1")
    assert followed.returncode == 3, followed.stdout + followed.stderr  # STOPPED


def test_bad_input_is_refused_before_anything_is_sent(head):
    typo = _submit(head, "train", "trainer.num_wrkers=8")
    assert typo.returncode == 2 and "do not compose" in typo.stderr
    without_token = {k: v for k, v in head["env"].items() if k != "RAY_AUTH_TOKEN"}
    refused = _submit(head, "auth_mode=token", "list",
                      env={**without_token, "HOME": str(head["root"])})  # no ~/.ray token
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()
