"""A sweep end to end: ``python -m pipelines.tune`` on local Ray, killed and run again.

Four tiny trials of the shapes_small recipe (M in {2, 4} x SMCA off / beta 8, 3 epochs, ASHA
with a grace period of 1 epoch), two at a time. The first run is killed (SIGKILL to its process
group: the driver and its embedded Ray) once one trial is done and another has a checkpoint but
is not done; the same command then finishes the sweep. One sweep serves every test here.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines.data.shapes import SHAPES  # noqa: E402
from pipelines.registry.register import LOGGED_TAG  # noqa: E402
from samdetr.data.shards import manifest_checksum  # noqa: E402
from samdetr.data.synthetic import write_synthetic_shards  # noqa: E402

MODEL = "sweep-test"


def _command(tmp: Path) -> list[str]:
    return [
        sys.executable, "-m", "pipelines.tune", f"output_root={tmp}", "sweep.name=t",
        "sweep.space.model.num_salient_points.grid=[2,4]", "sweep.make_data=null",
        f"data.train_shards={tmp / 'shards/train'}", f"data.val_shards={tmp / 'shards/val'}",
        "trainer.epochs=3", "sweep.scheduler.grace_period=1", "sweep.max_concurrent_trials=2",
        "sweep.trial_cpus=0.25", "trainer.cpus_per_worker=0.25", "trainer.num_workers=1",
        "trainer.num_pictures=0", "data.eval_loader_workers=0",
        f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        f"tracking.artifact_location={tmp / 'artifacts'}", f"tracking.registered_model={MODEL}",
    ]


def _statuses(experiment: Path) -> dict[str, str]:
    """``{trial id: status}`` from Tune's latest saved experiment state."""
    # The newest start's file (named by its start time; Tune rewrites older ones too).
    files = sorted(glob.glob(str(experiment / "experiment_state-*.json")))
    if not files:
        return {}
    try:
        state = json.loads(Path(files[-1]).read_text())
    except (json.JSONDecodeError, OSError):  # being rewritten
        return {}
    trials = [json.loads(entry[0]) for entry in state["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def _records(experiment: Path) -> dict[str, dict]:
    """``{trial id: the trial's Train run record}``."""
    out = {}
    for path in (experiment / "runs").glob("t-*/samdetr_run.json"):
        out[path.parent.name[2:]] = json.loads(path.read_text())
    return out


def _run_until_killed(command: list[str], tmp: Path, log: Path) -> dict:
    experiment = tmp / "tune" / "t"
    # Tune saves its experiment state (what the watcher reads) at most every 10 s by default:
    # on busy cores a trial can start, checkpoint and finish between two saves. Every second
    # here, so the moment is seen.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 420
        try:
            while time.monotonic() < deadline:
                assert proc.poll() is None, "the sweep ended before it could be interrupted"
                statuses = _statuses(experiment)
                done = {t for t, s in statuses.items() if s == "TERMINATED"}
                # Half-trained: Ray Train has registered a checkpoint of the trial's run (a
                # checkpoint folder alone may be one it never registered, and then retrains).
                midway = {t for t, s in statuses.items() if s == "RUNNING" and (
                    experiment / "runs" / f"t-{t}" / "checkpoint_manager_snapshot.json").is_file()}
                if done and midway:
                    return {"done": done, "midway": midway, "records": _records(experiment)}
                time.sleep(0.2)
            raise AssertionError("no moment with a finished and a half-trained trial")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
            proc.wait()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    for split, count, seed in (("train", 12, 0), ("val", 6, 1)):
        write_synthetic_shards(tmp / "data" / split, tmp / "shards" / split, count, seed=seed,
                               split=split, **SHAPES)
    command = _command(tmp)
    killed = _run_until_killed(command, tmp, tmp / "first.log")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    second = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    record = json.loads((tmp / "tune" / "t" / "sweep.json").read_text())
    return {"tmp": tmp, "killed": killed, "output": second.stdout, "client": client,
            "record": record, "experiment": tmp / "tune" / "t"}


def _children(sweep) -> list:
    client = sweep["client"]
    experiment = client.get_experiment_by_name("samdetr-sweeps")
    return client.search_runs([experiment.experiment_id],
                              f"tags.mlflow.parentRunId = '{sweep['record']['parent_run_id']}'")


def test_a_restarted_sweep_keeps_finished_trials_and_resumes_the_others(sweep):
    killed, experiment = sweep["killed"], sweep["experiment"]
    assert "restoring sweep 't'" in sweep["output"]
    statuses = _statuses(experiment)
    assert len(statuses) == 4 and set(statuses.values()) == {"TERMINATED"}
    records = _records(experiment)
    for trial in killed["done"] | killed["midway"]:  # the same Train run and MLflow run go on
        assert records[trial]["mlflow_run_id"] == killed["records"][trial]["mlflow_run_id"]
    client = sweep["client"]
    for trial, entry in records.items():
        steps = [m.step for m in client.get_metric_history(entry["mlflow_run_id"], "AP")]
        assert sorted(steps) == list(range(len(steps))), (trial, steps)  # no epoch twice
    for trial in killed["done"]:  # not trained again: Tune holds no result after the kill
        rows = (next(experiment.glob(f"train_trial_{trial}_*")) / "result.json").read_text()
        assert len(rows.splitlines()) == len(client.get_metric_history(
            records[trial]["mlflow_run_id"], "AP"))


def test_each_trial_is_a_child_run_with_its_params_metrics_and_model(sweep):
    children = _children(sweep)
    assert len(children) == 4
    assert {(c.data.params["model.num_salient_points"], c.data.params["model.smca"])
            for c in children} == {("2", "False"), ("4", "False"), ("2", "True"), ("4", "True")}
    assert len({c.info.run_name for c in children}) == 4
    statuses = {c.data.tags["sweep.status"] for c in children}
    assert "stopped early" in statuses and statuses <= {"finished", "stopped early"}
    for child in children:
        assert child.info.status == "FINISHED" and LOGGED_TAG in child.data.tags
        epochs = int(child.data.tags["sweep.epochs_run"])
        assert len(sweep["client"].get_metric_history(child.info.run_id, "AP")) == epochs
        if child.data.tags["sweep.status"] == "stopped early":
            # The scheduler stopped its Train run: nothing trained after the cut.
            run = sweep["experiment"] / "runs" / child.info.run_name
            assert epochs < 3 and not (run / "epoch_0003").exists()


def test_the_parent_holds_the_table_and_plots(sweep):
    client, parent = sweep["client"], sweep["record"]["parent_run_id"]
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"results.csv", "trials.txt", "AP_vs_params.png", "AP_by_epoch.png",
            "config.yaml"} <= artifacts
    folder = client.download_artifacts(parent, "results.csv", str(sweep["tmp"] / "dl"))
    lines = Path(folder).read_text().splitlines()
    assert lines[0].startswith("trial_id,model.num_salient_points,smca,best_AP,")
    assert len(lines) == 5 and all(",stopped early," in r or ",finished," in r for r in lines[1:])
    assert client.get_run(parent).info.status == "FINISHED"
    assert "Trials of sweep t (validation AP, best first):" in sweep["output"]


def test_the_winner_is_registered_once_as_challenger_with_its_tags(sweep):
    client = sweep["client"]
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert len(versions) == 1  # trials register nothing
    version = client.get_model_version_by_alias(MODEL, "challenger")
    assert client.get_registered_model(MODEL).aliases == {"challenger": version.version}
    tags = version.tags
    winner = sweep["record"]["winner"]
    assert tags["sweep.trial_id"] == winner["trial_id"]
    assert tags["sweep.parent_run_id"] == sweep["record"]["parent_run_id"]
    assert tags["samdetr.train_manifest_sha256"] == manifest_checksum(sweep["tmp"] / "shards/train")
    assert {"param.model.num_salient_points", "param.smca", "metric.AP", "metric.AP50"} <= set(tags)
    # The model's facts (pipelines.registry.model_facts), copied from the logged model.
    assert {"samdetr.categories", "samdetr.config", "samdetr.eval_size"} <= set(tags)
    assert tags["samdetr.val_manifest_sha256"] == manifest_checksum(sweep["tmp"] / "shards/val")
    children = {c.info.run_id: c for c in _children(sweep)}
    source = children[tags["samdetr.source_run_id"]]
    assert source.data.tags["sweep.trial_id"] == winner["trial_id"]
    best = max(m.value for c in children for m in client.get_metric_history(c, "AP"))
    assert float(tags["metric.AP"]) == pytest.approx(best, rel=1e-4, abs=1e-9)
    assert f"registered {MODEL} v{version.version} @challenger" in sweep["output"]


def test_trials_at_once_do_not_share_runs_checkpoints_or_clocks(sweep):
    children = _children(sweep)
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))  # two ran at once
    from samdetr.checkpoint import read_checkpoint

    for child in children:
        run = sweep["experiment"] / "runs" / child.info.run_name
        for folder in run.glob("epoch_*"):
            payload = read_checkpoint(folder / "checkpoint.pt")
            # Its own run (run name, hence epoch clock), its own model, its own MLflow run.
            assert payload["settings"]["trainer"]["run_name"] == child.info.run_name
            assert str(payload["settings"]["model"]["num_salient_points"]) == \
                child.data.params["model.num_salient_points"]
            assert payload["mlflow_run_id"] == child.info.run_id
