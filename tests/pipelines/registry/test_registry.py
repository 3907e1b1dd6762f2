"""The model registry against a real MLflow tracking server (SQLite backend, artifacts served
by the server): promotion with its gate and refusals, rollback, what versions carry, evaluation
records, prediction from ``@champion`` and serving with ``mlflow models serve`` over HTTP."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from support.mlflow_server import MlflowServer, free_port
from support.registry_case import build_case

from pipelines.inference.evaluate import EvaluateSettings, run_evaluate
from pipelines.inference.predict import PredictSettings, run_predict
from pipelines.promotion.gate import PromoteSettings, PromotionRefused
from pipelines.promotion.promote import run_promote
from pipelines.registry.evaluation_record import model_id_of
from pipelines.registry.mlflow_model import log_detector_model

NAME = "registry-test"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    server = MlflowServer(root / "server").start()
    case = build_case(root)
    mlflow.set_tracking_uri(server.url)
    try:
        with pytest.MonkeyPatch.context() as env:  # module-scoped: monkeypatch is per test
            env.setenv("MLFLOW_TRACKING_URI", server.url)
            yield {**case, "server": server, "client": MlflowClient(server.url)}
    finally:
        mlflow.set_tracking_uri(None)
        server.stop()


def _register(registry, checkpoint: str, alias: str = "challenger") -> str:
    with mlflow.start_run(run_name="train"):
        version = log_detector_model(checkpoint, registered_model_name=NAME) \
            .registered_model_version
    registry["client"].set_registered_model_alias(NAME, alias, version)
    return str(version)


def _promote(registry, **changes):
    settings = {"registered_model": NAME, "shards": registry["holdout"], **changes}
    return run_promote(PromoteSettings(**settings))


def _aliases(registry) -> dict[str, str]:
    return dict(registry["client"].get_registered_model(NAME).aliases)


def test_promotion_gate_refusals_and_rollback(registry):
    client = registry["client"]
    # A first challenger becomes champion when it reaches the threshold.
    poor = _register(registry, registry["poor"])
    with pytest.raises(PromotionRefused, match="no alias moved"):  # wrong set: not held out
        _promote(registry, shards=str(registry["root"] / "train_shards"))
    out = _promote(registry, threshold=0.5)
    assert out["decision"] == "rejected" and "threshold" in out["reason"]
    assert "champion" not in _aliases(registry)
    out = _promote(registry)  # threshold 0
    assert out["decision"] == "promoted" and _aliases(registry)["champion"] == poor

    # A better challenger replaces it; the old champion becomes `previous`.
    good = _register(registry, registry["good"])
    out = _promote(registry, margin=0.05)
    assert out["decision"] == "promoted", out
    assert out["challenger"]["AP"] > out["champion"]["AP"] + 0.05
    assert _aliases(registry) == {"champion": good, "previous": poor, "challenger": good}
    tags = client.get_model_version(NAME, good).tags
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.eval_manifest_sha256"] == registry["holdout_sha"]
    assert float(tags["promotion.challenger.AP"]) == pytest.approx(out["challenger"]["AP"],
                                                                   rel=1e-5)
    assert float(tags["promotion.champion.AP"]) == pytest.approx(out["champion"]["AP"], rel=1e-5)
    assert tags["champion.previous_version"] == poor and tags["champion.since"]
    model_tags = client.get_registered_model(NAME).tags
    assert model_tags["champion.version"] == good
    assert model_tags["champion.reason"].startswith("promoted: challenger AP")
    assert client.get_model_version(NAME, poor).tags["champion.until"]

    # Each scoring is an evaluation run with the shard set as a dataset input.
    run = client.get_run(out["evaluation_runs"]["challenger"])
    assert run.data.tags["samdetr.model_version"] == good
    assert run.data.metrics["AP"] == pytest.approx(out["challenger"]["AP"])
    dataset = run.inputs.dataset_inputs[0]
    assert dataset.dataset.digest == registry["holdout_sha"][:32]
    assert {t.key: t.value for t in dataset.tags}["samdetr.manifest_sha256"] == \
        registry["holdout_sha"]

    # A worse challenger is rejected; nothing moves.
    worse = _register(registry, registry["poor"])
    out = _promote(registry, dry_run=True)
    assert out["decision"] == "rejected (dry run: nothing moved)"
    # With the class guard on, the decision names the class that fell most.
    out = _promote(registry, dry_run=True, class_drop=0.0, class_min_gt=1)
    assert out["decision"].startswith("rejected") and " on class '" in out["reason"]
    assert "promotion.decision" not in client.get_model_version(NAME, worse).tags
    out = _promote(registry)
    assert out["decision"] == "rejected" and _aliases(registry)["champion"] == good
    assert client.get_model_version(NAME, worse).tags["promotion.decision"] == "rejected"

    # Refusals: another category set; trained on the evaluation set; missing files.
    other = _register(registry, registry["other_classes"])
    with pytest.raises(PromotionRefused, match="different category sets"):
        _promote(registry)
    assert client.get_model_version(NAME, other).tags["promotion.decision"] == "refused"
    _register(registry, registry["on_holdout"])
    with pytest.raises(PromotionRefused, match="trained on this shard set"):
        _promote(registry)
    gone = _register(registry, registry["good"])
    _delete_files(registry, gone)
    with pytest.raises(PromotionRefused, match="cannot be read|incomplete"):
        _promote(registry)
    assert _aliases(registry)["champion"] == good and _aliases(registry)["previous"] == poor

    # Rollback in one command: champion back to `previous`, which had no predecessor.
    out = _promote(registry, rollback=True)
    assert out == {"decision": "rolled back", "champion": poor, "demoted": good}
    assert _aliases(registry) == {"champion": poor, "challenger": gone}
    assert client.get_model_version(NAME, good).tags["promotion.decision"] == "rolled back"
    assert client.get_registered_model(NAME).tags["champion.reason"] == f"rollback from v{good}"
    with pytest.raises(PromotionRefused, match="nothing to roll back"):
        _promote(registry, rollback=True)


def _delete_files(registry, version: str) -> None:
    """Remove a version's model files from the server's artifact store."""
    client = registry["client"]
    location = client.get_logged_model(model_id_of(client.get_model_version(NAME, version))) \
        .artifact_location
    scheme = "mlflow-artifacts:/"
    assert location.startswith(scheme), location
    folder = registry["server"].root / "artifacts" / location[len(scheme):].lstrip("/")
    assert folder.is_dir(), folder
    shutil.rmtree(folder)


def test_versions_carry_their_facts_and_predict_from_the_champion(registry, tmp_path):
    client = registry["client"]
    version = _register(registry, registry["good"], alias="champion")
    tags = client.get_model_version(NAME, version).tags
    assert tags["samdetr.categories"] == '["square","disc","triangle"]'
    assert tags["samdetr.eval_size"] == "64/96"
    assert tags["samdetr.train_manifest_sha256"] == registry["train_sha"]
    assert '"num_salient_points":4' in tags["samdetr.config"]
    # The champion predicts with nothing but its URI.
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    table = model.predict(pd.DataFrame({"image": [Path(registry["jpeg"]).read_bytes()]}))
    assert len(table) == 10 * 8  # every (query, class) pair: fewer than num_top=100
    names = dict(zip(table["label"], table["name"], strict=True))
    assert (names.get(1, "square"), names.get(3, "disc"), names.get(7, "triangle")) == \
        ("square", "disc", "triangle")
    out = run_predict(PredictSettings(images=registry["jpeg"], output=str(tmp_path / "p"),
                                    model_uri=f"models:/{NAME}@champion", score_threshold=0.0,
                                    pictures=False))
    assert out["images"] == 1 and out["detections"] == 80


def test_evaluate_of_a_model_uri_is_recorded(registry):
    version = _register(registry, registry["good"], alias="scored")
    out = run_evaluate(EvaluateSettings(shards=registry["holdout"],
                                      model_uri=f"models:/{NAME}@scored"))
    tags = registry["client"].get_model_version(NAME, version).tags
    assert float(tags["evaluation.AP"]) == pytest.approx(out["metrics"]["AP"], rel=1e-5)
    assert tags["evaluation.run_id"] == out["evaluation_run"]
    run = registry["client"].get_run(out["evaluation_run"])
    assert run.data.tags["samdetr.purpose"] == "evaluate"
    assert run.inputs.model_inputs[0].model_id == \
        model_id_of(registry["client"].get_model_version(NAME, version))


def test_the_command_line_refuses_with_status_2(registry):
    command = [sys.executable, "-m", "pipelines.promote", f"registered_model={NAME}",
               "shards=/nonexistent/shards", "margin=2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "margin must be a number in [0, 1]" in done.stdout


def _wait_for(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "mlflow models serve exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout_s}s")


def test_mlflow_models_serve_detects_over_http(registry, tmp_path):
    version = _register(registry, registry["good"], alias="served")
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@served",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # The server runs `uvicorn` from PATH: this interpreter's environment must come first.
        env={**os.environ, "MLFLOW_TRACKING_URI": registry["server"].url,
             "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])})
    try:
        _wait_for(f"http://127.0.0.1:{port}/ping", process, 180)
        jpeg = Path(registry["jpeg"]).read_bytes()
        encoded = base64.b64encode(jpeg).decode()
        bodies = [
            {"dataframe_split": {"columns": ["image"], "data": [[encoded]]},
             "params": {"num_top": 5}},
            {"dataframe_records": [{"image": encoded}], "params": {"num_top": 5}},
        ]
        answers = [_post(f"http://127.0.0.1:{port}/invocations", body) for body in bodies]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        log.close()
    local = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(
        pd.DataFrame({"image": [jpeg]}), params={"num_top": 5})
    assert len(local) == 5
    for answer in answers:
        served = pd.DataFrame(answer["predictions"])
        assert list(served.columns) == list(local.columns)
        assert served["name"].tolist() == local["name"].tolist()
        assert served["score"].to_numpy() == pytest.approx(local["score"].to_numpy(), abs=1e-6)
        assert served[["x1", "y1", "x2", "y2"]].to_numpy() == pytest.approx(
            local[["x1", "y1", "x2", "y2"]].to_numpy(), abs=1e-3)


def _post(url: str, body: dict) -> dict:
    import json

    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_a_candidate_from_another_model_is_copied_in_then_judged(registry):
    """challenger_model: training registers into a candidates model; promotion copies the
    proposed version into the served model (once) and moves aliases there only."""
    client, candidates, served = registry["client"], "registry-candidates", "registry-served"
    with mlflow.start_run(run_name="train"):
        version = str(log_detector_model(registry["good"], registered_model_name=candidates)
                      .registered_model_version)
    client.set_registered_model_alias(candidates, "challenger", version)
    config = PromoteSettings(registered_model=served, challenger_model=candidates,
                           shards=registry["holdout"])
    out = run_promote(config)
    assert out["decision"] == "promoted", out
    aliases = client.get_registered_model(served).aliases
    copy = client.get_model_version(served, aliases["champion"])
    assert copy.source == f"models:/{candidates}/{version}"
    assert aliases["challenger"] == copy.version
    assert copy.tags["promotion.decision"] == "promoted"
    assert dict(client.get_registered_model(candidates).aliases) == {"challenger": version}
    again = run_promote(config)  # the same candidate: the copy is reused, nothing moves
    assert again["decision"] == "unchanged"
    assert len(client.search_model_versions(f"name = '{served}'")) == 1
    with pytest.raises(ValueError, match="challenger_model must name another registered model"):
        PromoteSettings(registered_model=served, challenger_model=served, shards="x")
