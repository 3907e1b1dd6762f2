"""Files written by earlier versions still load: a training checkpoint and an MLflow model of the
flat 0.1 layout (``tests/fixtures/legacy-0.1``, made by its ``make.py``) give the detections
that code gave."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from PIL import Image

from samdetr import Predictor, load_checkpoint
from samdetr.inference import detections_table

FIXTURE = Path(__file__).parents[1] / "fixtures" / "legacy-0.1"


def images() -> list[bytes]:
    """The inputs of ``make.py``: two random PNGs, 150x100 and 90x130."""
    out = []
    for seed, (w, h) in enumerate([(150, 100), (90, 130)]):
        gen = torch.Generator().manual_seed(seed)
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen)
        buffer = io.BytesIO()
        Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


@pytest.fixture(scope="module")
def expected() -> pd.DataFrame:
    return pd.DataFrame(json.loads((FIXTURE / "expected.json").read_text()))


def assert_same(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(actual) == len(expected) == 100
    pd.testing.assert_frame_equal(
        actual.reset_index(drop=True)[list(expected.columns)],
        expected,
        check_dtype=False,
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("legacy") / "checkpoint.pth"
    with gzip.open(FIXTURE / "checkpoint.pth.gz", "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def test_checkpoint_rebuilds_and_predicts_the_same(checkpoint, expected):
    model, config, extra = load_checkpoint(checkpoint)
    assert config.model.num_queries == 10 and extra["epoch"] == 3
    assert "optimizer" in extra
    predictor = Predictor.from_checkpoint(checkpoint)
    table = detections_table(predictor(images()), predictor.category_names)
    assert_same(pd.DataFrame(table), expected)


def test_mlflow_model_loads_and_predicts_the_same(tmp_path, expected):
    with tarfile.open(FIXTURE / "mlflow-model.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    out = model.predict(pd.DataFrame({"image": images()}))
    assert_same(out, expected)
