"""A training run whose storage is an S3 bucket (a local moto server): checkpoints and the run
record land in the bucket, the run resumes from it, the best checkpoint is logged and
registered in MLflow through Ray's checkpoint API, and scores from its URI as reported."""

from __future__ import annotations

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("ray")
pytest.importorskip("mlflow")

import mlflow.pyfunc  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from support.s3_server import moto_s3  # noqa: E402
from support.train_case import tiny_settings, write_shards  # noqa: E402

from pipelines.inference.evaluate import EvaluateSettings, run_evaluate  # noqa: E402
from pipelines.training.run import run_training  # noqa: E402
from pipelines.training.run_record import RECORD_FILE  # noqa: E402
from pipelines.training.settings import TrainSettings  # noqa: E402
from samdetr.data.shards import ShardDataset  # noqa: E402

BUCKET = "samdetr-runs"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as store, pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        if ray.is_initialized():
            ray.shutdown()
        # The workers get the store's environment as a cluster's nodes would.
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": store.env})
        yield store
        ray.shutdown()


def _keys(s3, prefix: str) -> set[str]:
    listed = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"] for item in listed.get("Contents", [])}


def test_train_resume_log_and_register_with_storage_on_s3(s3, tmp_path):
    train = write_shards(tmp_path, "train", 6, seed=0)
    val = write_shards(tmp_path, "val", 3, seed=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"tracking_uri": uri, "experiment": "s3", "registered_model": "s3-detr",
                "alias": "candidate", "artifact_location": str(tmp_path / "artifacts")}

    def settings(epochs: int) -> TrainSettings:
        return TrainSettings.from_dict(tiny_settings(
            train, val, f"s3://{BUCKET}/ray", "on-s3", epochs, tracking=tracking, num_workers=1,
        ))

    first = run_training(settings(1))
    assert first["best_checkpoint"] == f"s3://{BUCKET}/ray/on-s3/epoch_0001/checkpoint.pt"
    keys = _keys(s3, "ray/on-s3/")
    assert {"ray/on-s3/epoch_0001/checkpoint.pt", f"ray/on-s3/{RECORD_FILE}"} <= keys
    client = MlflowClient(uri)
    run_id = first["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_model_version_by_alias("s3-detr", "candidate").run_id == run_id

    # Resume from the bucket: the same MLflow run, one more epoch.
    second = run_training(settings(2))
    assert second["mlflow_run_id"] == run_id and second["last_metrics"]["epoch"] == 1
    assert sorted(m.step for m in client.get_metric_history(run_id, "AP")) == [0, 1]
    assert "ray/on-s3/epoch_0002/checkpoint.pt" in _keys(s3, "ray/on-s3/")
    assert client.get_run(run_id).info.status == "FINISHED"

    # The checkpoint scores from its URI what training reported for it.
    best = second["best_metrics"]
    scored = run_evaluate(EvaluateSettings(shards=val, checkpoint=second["best_checkpoint"]))
    for key in ("AP", "AP50", "AR100"):
        assert scored["metrics"][key] == pytest.approx(best[key], abs=1e-9), key

    # The registered model loads and predicts with nothing but MLflow (pointed at the store:
    # training leaves MLflow's process-wide URIs as they were).
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)
        model = mlflow.pyfunc.load_model("models:/s3-detr@candidate")
    table = model.predict(pd.DataFrame({"image": [ShardDataset(val)[0]["image"]]}),
                          params={"num_top": 5})
    assert len(table) == 5 and set(table["image_index"]) == {0}

    # A checkpoint in the bucket starts a fine-tuning run: a file's URI, or its Ray Train
    # checkpoint folder's (pipelines.training.pretrained).
    from pipelines.training.pretrained import fetch_pretrained

    folder = second["best_checkpoint"].rsplit("/", 1)[0]
    for source in (second["best_checkpoint"], folder):
        pretrained = fetch_pretrained(source, uri)
        assert pretrained.kind == "samdetr" and pretrained.origin == source
        assert pretrained.config.model.num_classes == 8


def test_an_official_checkpoint_in_a_bucket_is_read_for_fine_tuning(s3, tmp_path,
                                                                   official_tiny_dir):
    import argparse
    import io

    import torch

    from pipelines.training.pretrained import fetch_pretrained
    from samdetr.official_fixture import official_args, official_state_dict

    buffer = io.BytesIO()
    torch.save({"model": official_state_dict(official_tiny_dir, "base"),
                "args": argparse.Namespace(**official_args(official_tiny_dir, "base"))}, buffer)
    s3.client.put_object(Bucket=BUCKET, Key="pretrained/official.pth", Body=buffer.getvalue())
    source = f"s3://{BUCKET}/pretrained/official.pth"
    pretrained = fetch_pretrained(source, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert pretrained.kind == "official" and pretrained.origin == source
    assert pretrained.config.model.num_queries == 30
    with pytest.raises(ValueError, match="init.weights=s3://.*absent.pth could not be read"):
        fetch_pretrained(f"s3://{BUCKET}/pretrained/absent.pth", f"sqlite:///{tmp_path}/m.db")
