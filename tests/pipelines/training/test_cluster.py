"""Training on a real multi-node Ray cluster made on this machine (``ray.cluster_utils.Cluster``:
a head and worker nodes as separate raylets), tracked by a real MLflow server.

- two runs submitted at once, from relative paths, from a folder that is not the repository;
- a node that does not see a local path refuses the run at start (a node in its own mount
  namespace, where the shard folder is an empty tmpfs);
- the training worker's node goes away in the middle of an epoch: the run finishes from its
  last checkpoint like a run resumed from that checkpoint without a failure;
- the tracking server goes down during training: training finishes, and a re-run brings MLflow
  up to date.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

import ray  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from support.mlflow_server import MlflowServer  # noqa: E402
from support.train_case import TINY_MODEL, tiny_settings, train_in_background, write_shards  # noqa: E402

from pipelines.training.run import run_training  # noqa: E402
from pipelines.training.run_record import RECORD_FILE  # noqa: E402
from pipelines.training.settings import TrainSettings  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
# Dead nodes are noticed within a few seconds (Ray's defaults take ~30 s).
HEALTH = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
          "health_check_failure_threshold": 3}
WORKER_NODE = {"num_cpus": 2, "resources": {"worker_node": 4}}
ENV = {
    "RAY_AUTH_MODE": "disabled",
    # A stopped tracking server fails each call at once instead of after minutes of retries.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():  # before the nodes start: their workers inherit it
            mp.setenv(key, value)
        if ray.is_initialized():
            ray.shutdown()
        made = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "include_dashboard": False, "_system_config": HEALTH,
        })
        worker = made.add_node(**WORKER_NODE)
        ray.init(address=made.address)
        made.wait_for_nodes()
        root = tmp_path_factory.mktemp("cluster")
        server = MlflowServer(root / "mlflow").start()
        try:
            yield SimpleNamespace(cluster=made, worker=worker, address=made.address,
                                  server=server, root=root)
        finally:
            server.stop()
            ray.shutdown()
            made.shutdown()


def _alive() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def _wait(predicate, timeout_s: float, what: str, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _record(storage: Path, run_name: str) -> dict:
    return json.loads((storage / run_name / RECORD_FILE).read_text())


def _overrides(run_name: str, ctx) -> list[str]:
    """Hydra overrides of a tiny run, paths relative to the folder the command runs in."""
    model = [f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "backbone"]
    return [
        f"trainer.run_name={run_name}", "data.train_shards=shards/train",
        "data.val_shards=shards/val", "trainer.storage_path=ray", "trainer.epochs=1",
        f"trainer.ray_address={ctx.address}", "trainer.num_workers=2",
        "trainer.worker_resources={worker_node:1}", "trainer.num_pictures=0",
        "model.backbone.name=resnet18", *model,
        "data.batch_size=3", "data.eval_batch_size=2", "data.rows_per_block=3",
        "data.train_transform.scales=[80,96]", "data.train_transform.max_size=128",
        "data.train_transform.crop_sizes=[80]", "data.train_transform.crop_range=[48,80]",
        "data.eval_transform.size=80", "data.eval_transform.max_size=128",
        "data.eval_loader_workers=1",
        f"tracking.tracking_uri={ctx.server.url}", "tracking.experiment=two-at-once",
        "tracking.log_model=false",
    ]


def test_two_runs_at_once_from_relative_paths(cluster, tmp_path):
    """`python -m pipelines.train` twice at once, from another folder than the repository, with
    relative paths; the training workers must run on the worker node (custom resource)."""
    jobs = tmp_path / "jobs"
    write_shards(jobs, "train", 12, seed=0)
    write_shards(jobs, "val", 4, seed=1)
    env = {**os.environ, **ENV}
    logs, procs = {}, {}
    for name in ("run-a", "run-b"):
        logs[name] = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "pipelines.train", *_overrides(name, cluster)],
            cwd=jobs, env=env, stdout=logs[name], stderr=subprocess.STDOUT,
        )
    clocks: set[str] = set()
    while any(p.poll() is None for p in procs.values()):
        clocks |= {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if "epoch-clock" in a["name"]}
        time.sleep(0.5)
    for name, proc in procs.items():
        logs[name].close()
        output = (tmp_path / f"{name}.log").read_text()
        assert proc.returncode == 0, output[-6000:]
        assert f"run {name} finished" in output
    storage = jobs / "ray"  # the relative storage path, resolved against the command's folder
    ids = {name: _record(storage, name)["mlflow_run_id"] for name in procs}
    assert ids["run-a"] != ids["run-b"]
    client = MlflowClient(cluster.server.url)
    for name, run_id in ids.items():
        assert (storage / name / "epoch_0001" / "checkpoint.pt").is_file()
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == name
        assert _steps(client, run_id, "AP") == [0]
        settings = _record(storage, name)["settings"]
        assert settings["data"]["val_shards"] == str(jobs / "shards" / "val")
    # Each run had its own clock; none is left behind.
    assert len([c for c in clocks if "run-a" in c]) == 1
    assert len([c for c in clocks if "run-b" in c]) == 1
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "epoch-clock" in a["name"]]


def _ray_address_file() -> Path:
    """Where ``ray start`` writes its address: Ray's temp folder, by Ray's rule on Linux
    (``$RAY_TMPDIR``, else ``$TMPDIR``, else ``/tmp``; the suite sets ``RAY_TMPDIR`` per
    process when it runs tests in parallel)."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base, "ray", "ray_current_cluster")


def _start_hidden_node(address: str, hidden: Path) -> subprocess.Popen:
    """A node whose processes see an empty tmpfs at ``hidden`` (their own mount namespace)."""
    ray_cli = Path(sys.executable).with_name("ray")
    script = (f"mount -t tmpfs none {hidden} && exec {ray_cli} start --address={address} "
              "--num-cpus=1 --block --disable-usage-stats")
    return subprocess.Popen(["unshare", "-m", "sh", "-c", script], start_new_session=True,
                            env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_local_paths_every_node_cannot_see_are_refused(cluster, tmp_path):
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -m is not permitted here (needs CAP_SYS_ADMIN)")
    hidden = tmp_path / "hidden"
    train = write_shards(hidden, "train", 4, seed=0)
    val = write_shards(hidden, "val", 2, seed=1)
    server = {"tracking_uri": cluster.server.url, "experiment": "refused"}
    plain = tiny_settings(train, val, str(tmp_path / "ray"), "hidden", 1, tracking=server)
    # SQLite cannot be shared by the nodes: refused whatever the paths.
    sqlite = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    with pytest.raises(ValueError, match="SQLite file that workers on other nodes"):
        run_training(TrainSettings.from_dict({**plain, "tracking": sqlite}))
    before = _alive()
    node = _start_hidden_node(cluster.address, hidden)
    try:
        _wait(lambda: _alive() == before + 1, 60, "the node to join")
        start = time.monotonic()
        with pytest.raises(ValueError) as refused:
            run_training(TrainSettings.from_dict(plain))
        message = str(refused.value)
        assert "data.train_shards" in message and "data.val_shards" in message
        assert "trainer.storage_path =" not in message  # that folder is visible everywhere
        assert "shared storage" in message and "s3://" in message
        assert time.monotonic() - start < 60  # at start, not after a training attempt
        assert not (tmp_path / "ray" / "hidden" / "epoch_0001").exists()
    finally:
        os.killpg(node.pid, 9)
        node.wait(timeout=30)
        # `ray start` left its address for plain ray.init() calls to attach to: not ours to keep.
        _ray_address_file().unlink(missing_ok=True)
        _wait(lambda: _alive() == before, 60, "the node to be seen dead")


def _watch_and_fail(ctx, storage: Path, run_name: str, steps_per_epoch: int, copy_to: Path):
    """Once epoch 2 is a few steps in: copy the run folder (its latest checkpoint is epoch 1's),
    then remove the training worker's node and add a replacement."""
    record = _wait(lambda: (storage / run_name / RECORD_FILE).is_file(), 120, "the run record")
    assert record
    run_id = _record(storage, run_name)["mlflow_run_id"]
    client = MlflowClient(ctx.server.url)

    def in_epoch_two() -> bool:
        return any(m.step > steps_per_epoch + 2 for m in
                   client.get_metric_history(run_id, "train/loss"))

    _wait(in_epoch_two, 300, "epoch 2 to start")
    shutil.copytree(storage / run_name, copy_to / run_name)
    ctx.cluster.remove_node(ctx.worker, allow_graceful=False)
    ctx.worker = ctx.cluster.add_node(**WORKER_NODE)


def test_node_loss_mid_epoch_resumes_like_a_clean_restart(cluster, tmp_path):
    train = write_shards(tmp_path, "train", 24, seed=0)
    val = write_shards(tmp_path, "val", 4, seed=1)
    storage, reference = tmp_path / "ray", tmp_path / "reference"
    tracking = {"tracking_uri": cluster.server.url, "experiment": "node-loss",
                "retry_after_s": 1.0}
    plain = tiny_settings(train, val, str(storage), "node-loss", 3, tracking=tracking,
                          num_workers=1, worker_resources={"worker_node": 1}, max_failures=2)
    plain["data"]["batch_size"] = 2  # 12 steps per epoch
    runner, outcome = train_in_background(plain)
    try:
        _watch_and_fail(cluster, storage, "node-loss", 12, reference)
    finally:
        runner.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    client = MlflowClient(cluster.server.url)
    run_id = summary["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("AP", "loss", "epoch_time_s"):
        assert _steps(client, run_id, key) == [0, 1, 2], key  # each epoch once
    assert _steps(client, run_id, "train/loss") == list(range(1, 37))  # each step once
    latest = torch.load(summary["latest_checkpoint"], map_location="cpu", weights_only=True)
    assert [h["epoch"] for h in latest["history"]] == [0, 1, 2]

    # The same checkpoint (epoch 1's, copied before the failure), resumed without a failure.
    plain["trainer"]["storage_path"] = str(reference)
    plain["tracking"] = {"enabled": False}
    clean = run_training(TrainSettings.from_dict(plain))
    for key in ("AP", "AP50", "AR100", "loss"):
        assert clean["last_metrics"][key] == pytest.approx(summary["last_metrics"][key],
                                                           abs=1e-9), key
    again = torch.load(clean["latest_checkpoint"], map_location="cpu", weights_only=True)
    for name, tensor in latest["model"].items():
        torch.testing.assert_close(again["model"][name], tensor, rtol=0, atol=1e-6)


def test_tracking_server_down_does_not_stop_training(cluster, tmp_path):
    train = write_shards(tmp_path, "train", 6, seed=0)
    val = write_shards(tmp_path, "val", 2, seed=1)
    server = MlflowServer(tmp_path / "mlflow").start()
    tracking = {"tracking_uri": server.url, "experiment": "outage", "retry_after_s": 0.5,
                "flush_timeout_s": 2.0}
    plain = tiny_settings(train, val, str(tmp_path / "ray"), "outage", 3, tracking=tracking,
                          num_workers=1)
    runner, outcome = train_in_background(plain)
    try:
        _wait(lambda: (tmp_path / "ray" / "outage" / RECORD_FILE).is_file(), 120, "the record")
        run_id = _record(tmp_path / "ray", "outage")["mlflow_run_id"]
        client = MlflowClient(server.url)
        _wait(lambda: client.get_metric_history(run_id, "AP"), 300, "epoch 1's metrics", 0.2)
        server.stop()  # killed: every later call fails
    finally:
        runner.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary["tracking_failures"] >= 1
    assert summary["last_metrics"]["epoch"] == 2  # all epochs trained, checkpoints kept
    assert "mlflow_run_id" in summary

    server.start()
    try:
        client = MlflowClient(server.url)
        assert _steps(client, run_id, "AP") == [0]
        assert client.get_run(run_id).info.status == "RUNNING"  # could not be marked
        # The same command again: nothing to train; MLflow gets what it missed, once.
        again = run_training(TrainSettings.from_dict(plain))
        assert again["mlflow_run_id"] == run_id and again["tracking_failures"] == 0
        assert client.get_run(run_id).info.status == "FINISHED"
        for key in ("AP", "loss", "images_per_s"):
            assert _steps(client, run_id, key) == [0, 1, 2], key
        assert "model_uri" in again
    finally:
        server.stop()
