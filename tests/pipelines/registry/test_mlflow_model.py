"""The MLflow pyfunc model: logged as code into a temporary SQLite store, loaded back, served."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from PIL import Image
from support.tiny import tiny_config

from pipelines.registry.mlflow_model import SIGNATURE, log_detector_model, pip_requirements
from samdetr.builder import build_model
from samdetr.checkpoint import read_checkpoint, save_checkpoint
from samdetr.inference import TABLE_COLUMNS, Predictor, detections_table

NAME = "samdetr-tiny"
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 4, "name": "d"}]


def encode(width: int, height: int, seed: int, fmt: str = "PNG") -> bytes:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=gen)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format=fmt)
    return buffer.getvalue()


# Two images of other sizes than the 64x48 input example, one landscape PNG, one portrait JPEG.
IMAGES = [encode(150, 100, 1), encode(90, 130, 2, "JPEG")]


class Store:
    """A temporary tracking store and the model logged into it once for the whole module."""

    def __init__(self, root: Path):
        self.uri = f"sqlite:///{root}/mlflow.db"
        self.root = root


def _use(uri: str | None) -> None:
    mlflow.set_tracking_uri(uri)  # None unsets it (and MLFLOW_TRACKING_URI)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    store = Store(root)
    torch.manual_seed(0)
    config = tiny_config()
    store.checkpoint = save_checkpoint(
        root / "train.pth",
        build_model(config),
        config,
        eval_transform={"size": 64, "max_size": 96},
        categories=CATEGORIES,
        epoch=7,
        optimizer={"state": {}, "param_groups": [{"lr": 1e-4}]},
    )
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store.uri)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        _use(store.uri)
        try:
            store.experiment_id = mlflow.create_experiment(
                "samdetr-tests", artifact_location=(root / "artifacts").as_uri()
            )
            with mlflow.start_run(experiment_id=store.experiment_id) as run:
                store.run_id = run.info.run_id
                store.info = log_detector_model(store.checkpoint, registered_model_name=NAME)
        finally:
            _use(previous)
    return store


@pytest.fixture
def tracking(store, monkeypatch):
    """Point MLflow at the module's store for one test and restore the URI afterwards."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    _use(store.uri)
    yield store
    _use(previous)


@pytest.fixture(scope="module")
def expected(store):
    """What the Predictor itself returns for IMAGES, as the model's output table."""
    predictor = Predictor.from_checkpoint(store.checkpoint)
    table = detections_table(predictor(IMAGES), predictor.category_names)
    return pd.DataFrame(table)


def predict(model_uri: str, images=IMAGES, params=None) -> pd.DataFrame:
    model = mlflow.pyfunc.load_model(model_uri)
    return model.predict(pd.DataFrame({"image": images}), params=params)


def assert_frames_equal(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        actual.reset_index(drop=True), expected, check_dtype=False, rtol=1e-5, atol=1e-4
    )


# ----------------------------------------------------------------------------- predictions
def test_logged_model_predicts_like_the_predictor(tracking, expected):
    out = predict(tracking.info.model_uri)
    assert list(out.columns) == list(TABLE_COLUMNS)
    assert len(out) == 2 * 10 * 5  # num_top 100 > Q * K = 50 pairs per image
    assert_frames_equal(out, expected)
    assert set(out["name"]) <= {"a", "b", "d", ""}
    assert (out.loc[out["image_index"] == 0, ["x1", "x2"]] <= 150).all().all()
    assert (out.loc[out["image_index"] == 1, ["y1", "y2"]] <= 130).all().all()


def test_output_matches_the_signature(tracking):
    out = predict(tracking.info.model_uri, images=IMAGES[:1], params={"num_top": 2})
    spec = {col.name: col.type.name for col in tracking.info.signature.outputs.inputs}
    kinds = {"long": "i", "double": "f", "string": "O"}
    assert {c: kinds[t] for c, t in spec.items()} == {c: out[c].dtype.kind for c in out.columns}
    assert tracking.info.signature.to_dict() == SIGNATURE.to_dict()


def test_params(tracking, expected):
    model = mlflow.pyfunc.load_model(tracking.info.model_uri)
    frame = pd.DataFrame({"image": IMAGES})
    top = model.predict(frame, params={"num_top": 3})
    assert top["image_index"].tolist() == [0, 0, 0, 1, 1, 1]
    threshold = float(expected["score"].median())
    kept = model.predict(frame, params={"score_threshold": threshold})
    assert_frames_equal(kept, expected[expected["score"] >= threshold].reset_index(drop=True))
    empty = model.predict(frame, params={"score_threshold": 1.0})
    assert len(empty) == 0 and list(empty.columns) == list(TABLE_COLUMNS)
    assert empty["score"].dtype == "float64" and empty["label"].dtype == "int64"
    with pytest.raises(MlflowException, match="num_top"):
        model.predict(frame, params={"num_top": "many"})


def test_any_number_of_rows(tracking):
    model = mlflow.pyfunc.load_model(tracking.info.model_uri)
    images = [encode(20 + 7 * i, 30 + 5 * i, i) for i in range(6)]
    out = model.predict(pd.DataFrame({"image": images}), params={"num_top": 1})
    assert out["image_index"].tolist() == list(range(6))
    assert len(model.predict(pd.DataFrame({"image": []}, dtype=object))) == 0


def test_bad_input(tracking):
    model = mlflow.pyfunc.load_model(tracking.info.model_uri)
    with pytest.raises(MlflowException, match="image"):
        model.predict(pd.DataFrame({"picture": IMAGES}))
    with pytest.raises(ValueError, match="image 0"):
        model.predict(pd.DataFrame({"image": [b"not an image"]}))
    python_model = model.unwrap_python_model()
    # Called directly (no MLflow schema enforcement) it falls back to the same defaults.
    assert len(python_model.predict(None, pd.DataFrame({"image": IMAGES[:1]}))) == 50
    with pytest.raises(TypeError, match="DataFrame"):
        python_model.predict(None, IMAGES)
    with pytest.raises(ValueError, match="'image' column"):
        python_model.predict(None, pd.DataFrame({"picture": IMAGES}))


# ----------------------------------------------------------------------------- the logged files
def test_model_is_logged_as_code_without_pickles(tracking):
    local = Path(mlflow.artifacts.download_artifacts(tracking.info.model_uri))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert "pyfunc.py" in files and "code/samdetr/inference.py" in files
    flavor = Model.load(local).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in flavor  # the cloudpickle file of a pickled PythonModel
    # The slim checkpoint: weights-only loadable, no optimizer state or epoch.
    payload = read_checkpoint(local / flavor["artifacts"]["checkpoint"]["path"])
    assert set(payload) == {"format", "version", "config", "model", "eval_transform", "categories"}
    assert payload["categories"] == CATEGORIES
    requirements = (local / "requirements.txt").read_text().split()
    assert set(pip_requirements()) <= set(requirements)
    assert any(r.startswith("mlflow==") for r in requirements)
    assert not any("+" in r for r in requirements)  # no local version labels like +cu130


@pytest.mark.slow  # a new interpreter importing torch and mlflow: ~7 s on an idle machine
def test_fresh_process_loads_the_bundled_samdetr(tracking, tmp_path):
    # A new interpreter outside the repository: samdetr must come from the model's code/ copy.
    code = (
        "import io, json, sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "images = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]\n"
        "out = model.predict(pd.DataFrame({'image': images}), params={'num_top': 5})\n"
        "import samdetr\n"
        "print(json.dumps({'samdetr': samdetr.__file__, 'score': out['score'].tolist()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code, tracking.info.model_uri],
        input=json.dumps([data.hex() for data in IMAGES]),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    local = Path(mlflow.artifacts.download_artifacts(tracking.info.model_uri)).resolve()
    assert Path(result["samdetr"]).resolve().is_relative_to(local / "code" / "samdetr")
    here = predict(tracking.info.model_uri, params={"num_top": 5})["score"].tolist()
    assert result["score"] == pytest.approx(here, rel=1e-5)


# ----------------------------------------------------------------------------- registry
def test_registry_version_and_alias(tracking, expected):
    assert tracking.info.registered_model_version == 1
    assert_frames_equal(predict(f"models:/{NAME}/1"), expected)
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "champion", 1)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    assert_frames_equal(predict(f"models:/{NAME}@champion"), expected)


def test_new_version_with_custom_input_example(tracking, expected):
    example = encode(40, 30, 9, "JPEG")
    with mlflow.start_run(experiment_id=tracking.experiment_id):
        info = log_detector_model(
            tracking.checkpoint, name="detector", registered_model_name=NAME, input_images=[example]
        )
    assert info.registered_model_version >= 2
    MlflowClient().set_registered_model_alias(NAME, "latest-test", info.registered_model_version)
    assert_frames_equal(predict(f"models:/{NAME}@latest-test"), expected)
    local = mlflow.artifacts.download_artifacts(info.model_uri)
    stored = Model.load(local).load_input_example(local)
    assert stored["image"].tolist() == [example]


# ----------------------------------------------------------------------------- misuse
def test_logging_needs_an_active_run(tracking):
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="start_run"):
        log_detector_model(tracking.checkpoint)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"input_images": b"jpeg"}, TypeError),
        ({"input_images": []}, ValueError),
        ({"name": ""}, ValueError),
    ],
)
def test_bad_logging_arguments(tracking, kwargs, error):
    with mlflow.start_run(experiment_id=tracking.experiment_id):
        with pytest.raises(error):
            log_detector_model(tracking.checkpoint, **kwargs)


def test_tracking_uri_is_restored(store):
    # Runs without the `tracking` fixture: the module's store must not leak into other tests.
    assert os.environ.get("MLFLOW_TRACKING_URI") != store.uri
