"""Every command uses the MLflow store it is given for every MLflow call: the store lies in a
folder of its own, the command runs in another folder (where MLflow's default store,
``./mlflow.db``, would be), with no MLflow URI in the environment, and afterwards no default
store was made and no process-wide MLflow URI is left set.

One entry point per test: training's and a sweep's model logging and registration
(:mod:`pipelines.registry.register`, :mod:`pipelines.sweeps.tracking`), evaluate, promote (its
command line,
as users run it) and predict; then the one resolution of a missing setting they share.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from support.registry_case import build_case

from pipelines.common.checkpoints import CHECKPOINT_FILE
from pipelines.common.tracking import URI_VARIABLES, create_run, store_client, using_store
from pipelines.common.tracking_settings import TrackingSettings, store_uri
from pipelines.inference.evaluate import EvaluateSettings, run_evaluate
from pipelines.inference.predict import PredictSettings, run_predict
from pipelines.registry.mlflow_model import log_detector_model
from pipelines.registry.register import log_best_model
from pipelines.sweeps.tracking import register_winner
from samdetr.config import known_fields

NAME = "uri-test"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store in a folder of its own holding ``NAME`` v1 @challenger (the "good" model
    of :mod:`registry_case`), registered while the current folder was yet another one."""
    root = tmp_path_factory.mktemp("uri")
    case = build_case(root / "case")
    folder = root / "store"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as env:
        _away_from_any_store(env, root / "setup")
        client = store_client(uri)
        experiment = client.create_experiment("models", str(folder / "artifacts"))
        with using_store(uri), mlflow.start_run(experiment_id=experiment) as run:
            info = log_detector_model(case["good"], registered_model_name=NAME)
        client.set_registered_model_alias(NAME, "challenger", info.registered_model_version)
    return {**case, "uri": uri, "folder": folder, "model_uri": info.model_uri,
            "run_id": run.info.run_id, "artifacts": str(folder / "artifacts")}


def _away_from_any_store(env: pytest.MonkeyPatch, cwd: Path) -> Path:
    """No MLflow URI from the environment or from earlier code; ``cwd`` the current folder."""
    for name in URI_VARIABLES:
        env.delenv(name, raising=False)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    cwd.mkdir(parents=True, exist_ok=True)
    env.chdir(cwd)
    return cwd


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch):
    return _away_from_any_store(monkeypatch, tmp_path / "elsewhere")


def _left_alone(store: dict, cwd: Path) -> None:
    """MLflow's default store was never opened, and no process-wide MLflow URI was left."""
    assert not (cwd / "mlflow.db").exists()
    assert [name for name in URI_VARIABLES if name in os.environ] == []
    assert store["uri"] not in (mlflow.get_tracking_uri(), mlflow.get_registry_uri())


def test_training_logs_and_registers_its_model_in_the_given_store(store, elsewhere, tmp_path):
    from ray.train import Checkpoint

    run_id = create_run(store["uri"], "train", "r", {}, "", store["artifacts"])
    folder = tmp_path / "epoch_0002"
    folder.mkdir()
    shutil.copy(store["good"], folder / CHECKPOINT_FILE)
    tracking = TrackingSettings(tracking_uri=store["uri"], registered_model="trained",
                                alias="candidate")
    out = log_best_model(tracking, store["uri"], run_id, str(folder / CHECKPOINT_FILE),
                         Checkpoint.from_directory(str(folder)))
    assert out["registered_model"] == "trained v1 @candidate"
    version = store_client(store["uri"]).get_model_version_by_alias("trained", "candidate")
    assert version.run_id == run_id
    _left_alone(store, elsewhere)


def test_a_sweep_registers_its_winner_in_the_given_store(store, elsewhere):
    registered = register_winner(store["uri"], TrackingSettings(registered_model="swept"),
                                 store["model_uri"], {"sweep.name": "s"}, "challenger")
    assert registered == "swept v1 @challenger"
    tags = store_client(store["uri"]).get_model_version_by_alias("swept", "challenger").tags
    assert tags["sweep.name"] == "s" and tags["samdetr.train_manifest_sha256"]
    _left_alone(store, elsewhere)


def test_evaluate_loads_and_records_in_the_given_store(store, elsewhere):
    out = run_evaluate(EvaluateSettings(shards=store["holdout"], tracking_uri=store["uri"],
                                      model_uri=f"models:/{NAME}@challenger"))
    client = store_client(store["uri"])
    run = client.get_run(out["evaluation_run"])
    assert run.data.metrics["AP"] == pytest.approx(out["metrics"]["AP"])
    assert client.get_experiment(run.info.experiment_id).name == "samdetr-evaluation"
    assert client.get_model_version(NAME, "1").tags["evaluation.run_id"] == run.info.run_id
    _left_alone(store, elsewhere)


@pytest.mark.parametrize("model", ["registered", "run"])
def test_predict_loads_from_the_given_store(store, elsewhere, model):
    """A registered version, and a model as its run names it (``runs:/ID/model``, which MLflow
    resolves through its default store too)."""
    uri = (f"models:/{NAME}@challenger" if model == "registered"
           else f"runs:/{store['run_id']}/model")
    out = run_predict(PredictSettings(images=store["jpeg"], output=str(elsewhere / "p"),
                                    model_uri=uri, pictures=False, tracking_uri=store["uri"],
                                    score_threshold=0.0))
    assert out["images"] == 1 and out["detections"] == 10 * 8  # every (query, class) pair
    _left_alone(store, elsewhere)


def test_promote_on_the_command_line_uses_the_given_store(store, elsewhere):
    """What a user ran: ``tracking_uri=sqlite:///.../mlflow.db``, not $MLFLOW_TRACKING_URI."""
    environment = {k: v for k, v in os.environ.items() if k not in URI_VARIABLES}
    command = [sys.executable, "-m", "pipelines.promote", f"tracking_uri={store['uri']}",
               f"registered_model={NAME}", f"shards={store['holdout']}",
               f"output_root={elsewhere / 'outputs'}"]
    done = subprocess.run(command, cwd=elsewhere, env=environment, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "decision: promoted" in done.stdout
    client = store_client(store["uri"])
    assert str(client.get_registered_model(NAME).aliases["champion"]) == "1"
    _left_alone(store, elsewhere)


def test_a_missing_setting_means_the_environment_then_the_current_folder(store, elsewhere,
                                                                          monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    assert store_uri(None) == store["uri"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert store_uri(None) == f"sqlite:///{elsewhere / 'mlflow.db'}"
    assert store_uri("sqlite:///x/mlflow.db") == f"sqlite:///{elsewhere / 'x/mlflow.db'}"
    monkeypatch.chdir(store["folder"])  # the store is ./mlflow.db here
    out = run_predict(PredictSettings(images=store["jpeg"], output=str(elsewhere / "p"),
                                    model_uri=f"models:/{NAME}@challenger", pictures=False))
    assert out["images"] == 1


def test_predict_takes_tracking_uri_on_the_command_line():
    from pipelines.cli.config_store import register_defaults, settings_dict

    register_defaults()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=[
            "images=a.jpg", "model_uri=models:/m@champion", "tracking_uri=http://mlflow:5000"])
        plain = settings_dict(cfg)
    config = PredictSettings(**known_fields(PredictSettings, plain, "predict"))
    assert config.tracking_uri == "http://mlflow:5000"
    with pytest.raises(ValueError, match="tracking_uri must be an MLflow store URI or null"):
        PredictSettings(images="a.jpg", output="o", checkpoint="c.pt", tracking_uri="")


def test_using_store_puts_back_what_was_set(monkeypatch, tmp_path):
    """Inside, MLflow's process-wide URIs are the store; afterwards, exactly what they were
    (``mlflow.set_tracking_uri`` writes $MLFLOW_TRACKING_URI, and unsetting deletes it)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///before.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    inner = f"sqlite:///{tmp_path / 'inner.db'}"
    with using_store(inner):
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (inner, inner)
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///before.db"
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == "sqlite:///before.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(None)
    with pytest.raises(RuntimeError), using_store(inner):
        raise RuntimeError("a failure inside")
    assert [name for name in URI_VARIABLES if name in os.environ] == []
