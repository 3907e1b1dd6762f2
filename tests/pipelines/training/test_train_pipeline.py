"""End-to-end training on Ray Train with 2 CPU workers, tracked in a temporary MLflow store:
metrics, params and artifacts; resume at the right epoch; an injected worker failure;
a checkpoint that evaluates to the metrics reported at training time."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

import ray  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from support.train_case import TINY_MODEL, tiny_settings, write_shards  # noqa: E402

from pipelines.inference.evaluate import EvaluateSettings, run_evaluate  # noqa: E402
from pipelines.training.run import format_summary, run_training  # noqa: E402
from pipelines.training.settings import TrainSettings  # noqa: E402
from samdetr.data.shards import manifest_checksum  # noqa: E402

EPOCH_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "images_per_s", "epoch_time_s", "loss",
              "first_batch_s", "data_wait_share")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield {
        "root": root,
        "train": write_shards(root, "train", 12, seed=0),
        "val": write_shards(root, "val", 6, seed=1),
        "uri": f"sqlite:///{root / 'mlflow.db'}",
    }
    ray.shutdown()


def _settings(ws, run_name: str, epochs: int, optim: dict | None = None,
              **trainer) -> TrainSettings:
    tracking = {
        "tracking_uri": ws["uri"], "experiment": "tests",
        "artifact_location": str(ws["root"] / "artifacts"),
        "registered_model": "tiny-detr", "alias": "candidate",
    }
    plain = tiny_settings(ws["train"], ws["val"], str(ws["root"] / "ray"), run_name, epochs,
                          tracking=tracking, **trainer)
    plain["optim"].update(optim or {})
    return TrainSettings.from_dict(plain)


def _run(client: MlflowClient, run_id: str):
    return client.get_run(run_id)


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.slow
def test_train_logs_resumes_and_checkpoint_scores_the_same(workspace):
    ws = workspace
    # A warm-up over the first 3 optimizer steps, and the drop after epoch 2 (the third).
    schedule = {"warmup_steps": 3, "warmup_start": 0.1, "lr_drop_epochs": [2]}
    summary = run_training(_settings(ws, "basic", epochs=2, optim=schedule))
    client = MlflowClient(ws["uri"])
    run_id = summary["mlflow_run_id"]
    run = _run(client, run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.hidden_dim"] == "32" and params["trainer.num_workers"] == "2"
    assert params["optim.lr"] == "0.0002" and params["data.batch_size"] == "3"
    for key in EPOCH_KEYS:
        assert _steps(client, run_id, key) == [0, 1], key  # step = epoch, each once
    assert "gpu_mem_peak_gib" not in client.get_run(run_id).data.metrics  # CPU workers
    for entry in client.get_metric_history(run_id, "data_wait_share"):
        assert 0.0 <= entry.value < 1.0
    # 12 images in blocks of 3 over 2 workers, batch 3: 2 steps per worker per epoch.
    assert _steps(client, run_id, "train/loss") == [1, 2, 3, 4]
    for key in ("train/loss_ce", "train/loss_bbox", "train/loss_giou", "train/lr",
                "train/lr_backbone"):
        assert _steps(client, run_id, key) == [1, 2, 3, 4], key
    files = _artifacts(client, run_id)
    assert {"config.yaml", "convergence.png", "predictions/epoch_001.png",
            "predictions/epoch_002.png", "classes/epoch_0001.json", "classes/epoch_0001.png",
            "classes/epoch_0002.json", "classes/epoch_0002.png"} <= files
    version = client.get_model_version_by_alias("tiny-detr", "candidate")
    assert version.run_id == run_id
    # The version names its data, categories, eval size and source run
    # (pipelines.registry.model_facts).
    tags = version.tags
    assert tags["samdetr.train_manifest_sha256"] == manifest_checksum(ws["train"])
    assert tags["samdetr.val_manifest_sha256"] == manifest_checksum(ws["val"])
    assert tags["samdetr.source_run_id"] == run_id
    assert tags["samdetr.categories"].startswith('["') and tags["samdetr.eval_size"]

    # The best checkpoint, scored in one process, gives what training reported for it.
    best = summary["best_metrics"]
    payload = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    assert payload["epoch"] == best["epoch"]
    assert set(payload) >= {"model", "optimizer", "scheduler", "rng", "config", "settings"}
    # Each class's numbers, every epoch, in the history and in MLflow: COCO's AP50 is their
    # mean over the classes with ground truth.
    for entry in payload["history"]:
        measured = [c for c in entry["classes"] if c["num_gt"] > 0]
        assert measured and sum(c["AP50"] for c in measured) / len(measured) == \
            pytest.approx(entry["AP50"], abs=1e-9)
        for row in measured:
            logged = {m.step: m.value for m in client.get_metric_history(
                run_id, f"AP50/{row['name']}")}
            assert logged[entry["epoch"]] == pytest.approx(row["AP50"]), row["name"]
    result = run_evaluate(EvaluateSettings(shards=ws["val"], checkpoint=summary["best_checkpoint"]))
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert result["metrics"][key] == pytest.approx(best[key], abs=1e-9), key
    assert result["images"] == 6 and result["images_per_s"] > 0

    # The registered MLflow model (the best checkpoint behind a pyfunc) scores like the
    # checkpoint run through samdetr's Predictor on the same images.
    from samdetr.data.shards import ShardDataset
    from samdetr.engine.coco_eval import evaluate_detections
    from samdetr.engine.evaluation import ground_truth
    from samdetr.inference import Predictor

    served = run_evaluate(EvaluateSettings(shards=ws["val"],
    model_uri="models:/tiny-detr@candidate",
                                         tracking_uri=ws["uri"]))
    assert served["evaluation_run"]  # recorded in the same store
    predictor = Predictor.from_checkpoint(summary["best_checkpoint"])
    rows = [ShardDataset(ws["val"])[i] for i in range(6)]
    direct = [
        {"image_id": row["image_id"], **predictor([row["image"]], exif_transpose=False)[0]}
        for row in rows
    ]
    expected = evaluate_detections(ground_truth(ws["val"]), direct)
    for key in ("AP", "AP50", "AR100"):
        assert served["metrics"][key] == pytest.approx(expected[key], abs=1e-6), key

    # Same run name, more epochs: continues at epoch 2 in the same MLflow run.
    again = run_training(_settings(ws, "basic", epochs=3, optim=schedule))
    assert again["mlflow_run_id"] == run_id
    assert again["last_metrics"]["epoch"] == 2
    for key in ("AP", "loss"):
        assert _steps(client, run_id, key) == [0, 1, 2], key
    assert _steps(client, run_id, "train/loss") == [1, 2, 3, 4, 5, 6]
    latest = torch.load(again["latest_checkpoint"], map_location="cpu", weights_only=True)
    assert [h["epoch"] for h in latest["history"]] == [0, 1, 2]
    assert latest["scheduler"]["epoch"] == 3 and latest["scheduler"]["steps"] == 6
    # Each step's rate (2 steps an epoch): the warm-up, carried across the resume.
    rates = {m.step: m.value for m in client.get_metric_history(run_id, "train/lr")}
    warm = [0.1, 0.4, 0.7]  # 0.1 + 0.9 * step / 3 for steps 0-2
    assert rates == pytest.approx({1: 2e-4 * warm[0], 2: 2e-4 * warm[1], 3: 2e-4 * warm[2],
                                   4: 2e-4, 5: 2e-5, 6: 2e-5}, rel=1e-6)
    # A registered version per distinct best checkpoint, never a duplicate.
    versions = client.search_model_versions("name='tiny-detr'")
    expected_versions = 1 if again["best_checkpoint"] == summary["best_checkpoint"] else 2
    assert len(versions) == expected_versions


@pytest.mark.slow
def test_injected_failure_is_survived_and_each_epoch_reported_once(workspace):
    """The run fails after epoch 1 and resumes. It accumulates 2 batches per step (each worker
    has 2 a epoch: one step an epoch), recomputes activations in the backward pass, and keeps a
    moving average of its weights, whose checkpoints offer the average as their model; the
    average goes on across the restart."""
    from samdetr.checkpoint import load_checkpoint

    ws = workspace
    summary = run_training(_settings(ws, "faulty", epochs=2, fail_after_epoch=0, max_failures=1,
                                     accumulate=2, ema_decay=0.5, ema_warmup_steps=0,
                                     ema_weights="ema",
                                     activation_checkpointing=["backbone", "decoder"]))
    client = MlflowClient(ws["uri"])
    run_id = summary["mlflow_run_id"]
    run = _run(client, run_id)
    assert run.info.status == "FINISHED"
    assert (run.data.params["trainer.accumulate"], run.data.params["trainer.ema_decay"]) == \
        ("2", "0.5")
    for key in ("AP", "loss", "epoch_time_s", "raw/AP", "ema/AP", "ema_used"):
        assert _steps(client, run_id, key) == [0, 1], key
    assert _steps(client, run_id, "train/loss") == [1, 2]
    latest = torch.load(summary["latest_checkpoint"], map_location="cpu", weights_only=True)
    assert [h["epoch"] for h in latest["history"]] == [0, 1]
    assert os.path.basename(os.path.dirname(summary["latest_checkpoint"])) == "epoch_0002"
    assert latest["global_step"] == 2 and latest["ema"]["updates"] == 2
    for entry in latest["history"]:  # the headline numbers are the average's
        assert entry["ema_used"] == 1.0 and entry["AP"] == entry["ema/AP"]
        assert {"raw/AP", "raw/AP50"} <= set(entry)
    assert latest["weights"] == "ema"
    model, _, _ = load_checkpoint(summary["latest_checkpoint"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, latest["ema"]["model"][name]), name
    assert any(not torch.equal(v, latest["model"][k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_a_failed_run_is_marked_failed_and_leaves_no_epoch_clock(workspace):
    ws = workspace
    with pytest.raises(Exception, match="injected after epoch 0"):
        run_training(_settings(ws, "doomed", epochs=2, fail_after_epoch=0, max_failures=0))
    client = MlflowClient(ws["uri"])
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'doomed'")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not [name for name in ray.util.list_named_actors() if "epoch-clock-doomed" in name]


def test_a_multiscale_model_trains_logs_and_serves_through_the_pipeline(workspace):
    """The multiscale model (three levels, deformable encoder) through the same pipeline:
    one epoch on one worker, its MLflow model, and that model scoring like the checkpoint."""
    ws = workspace
    settings = TrainSettings.from_dict(tiny_settings(
        ws["train"], ws["val"], str(ws["root"] / "ray"), "multiscale", 1,
        tracking={"tracking_uri": ws["uri"], "experiment": "tests-multiscale",
                  "artifact_location": str(ws["root"] / "artifacts-ms")},
        num_workers=1,
    ) | {"model": {**TINY_MODEL, "multiscale": True}})
    model = settings.detector.model
    assert model.multiscale and model.layer_levels == (2, 1)
    summary = run_training(settings)
    client = MlflowClient(ws["uri"])
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    assert _steps(client, summary["mlflow_run_id"], "AP") == [0]
    checkpoint = run_evaluate(EvaluateSettings(shards=ws["val"],
                                             checkpoint=summary["best_checkpoint"]))
    served = run_evaluate(EvaluateSettings(shards=ws["val"], model_uri=summary["model_uri"],
                                         tracking_uri=ws["uri"], record=False))
    for key in ("AP", "AP50", "AR100"):
        assert served["metrics"][key] == pytest.approx(checkpoint["metrics"][key], abs=1e-6)


@pytest.mark.slow
def test_workers_load_the_imagenet_weights_the_driver_read(workspace, tmp_path):
    """The driver reads the ImageNet weights; the Ray Train workers get them from the object
    store. The weights name points at a file that does not exist: a worker that read it
    itself would fail, so the run finishing proves no worker did (what a GPU node without
    network access or the file needs).

    The same run stops early: no AP gain can exceed early_stop_min_delta=1, so after epoch 2
    of 3 its metric has not improved for early_stop_patience=1 epoch."""
    import torchvision

    from samdetr.checkpoint import load_checkpoint

    plain = tiny_settings(workspace["train"], workspace["val"], str(tmp_path / "ray"),
                          "shared-weights", 3, early_stop_patience=1, early_stop_min_delta=1.0)
    plain["model"]["backbone"] = {"name": "resnet18", "trainable_layers": 0,
                                  "weights": str(tmp_path / "only-on-the-driver.pth")}
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    summary = run_training(TrainSettings.from_dict(plain), backbone_state=state)
    assert summary["last_metrics"]["epoch"] == 1 and summary["last_metrics"]["stopped_early"]
    assert "stopped early after epoch 2" in format_summary(summary)
    model, _, _ = load_checkpoint(summary["best_checkpoint"])
    # trainable_layers=0: the trunk is frozen, so it still holds exactly what was shared.
    assert torch.equal(model.backbone.body.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight,
                       state["layer4.1.conv2.weight"])


def _official_file(fixture, path) -> str:
    """The official-tiny fixture's weights (ResNet-50, 91 classes) as an official checkpoint."""
    import argparse

    from samdetr.official_fixture import official_args, official_state_dict

    torch.save({"model": official_state_dict(fixture, "base"),
                "args": argparse.Namespace(**official_args(fixture, "base"))}, path)
    return str(path)


def test_an_official_checkpoint_fine_tunes_to_other_classes_and_on_from_the_registry(
        workspace, tmp_path, official_tiny_dir):
    """init.weights: an official-format checkpoint (K=91) fine-tuned to the shards' K=8 with a
    frozen backbone, through Ray Train, tracked and registered with its lineage; then that
    registered version read back from its models:/ URI as the next run's start."""
    import hashlib
    import json

    from samdetr.checkpoint import read_checkpoint
    from samdetr.official import convert_state_dict
    from samdetr.official_fixture import official_state_dict
    from samdetr.pretrained import read_pretrained

    ws = workspace
    official = _official_file(official_tiny_dir, tmp_path / "official.pth")
    model = read_pretrained(official).config.replace(num_classes=8).to_dict()["model"]
    plain = tiny_settings(ws["train"], ws["val"], str(tmp_path / "ray"), "from-official", 1,
                          tracking={"tracking_uri": ws["uri"], "experiment": "finetune",
                                    "artifact_location": str(ws["root"] / "artifacts"),
                                    "registered_model": "tiny-finetuned"})
    plain.update(model=model, init={"weights": official})
    plain["optim"]["freeze"] = ["backbone"]
    summary = run_training(TrainSettings.from_dict(plain))

    payload = read_checkpoint(summary["best_checkpoint"])
    state = payload["model"]
    assert state["class_heads.0.weight"].shape == (8, 256)
    converted = convert_state_dict(official_state_dict(official_tiny_dir, "base"))
    frozen = "backbone.body.layer3.0.conv1.weight"
    assert torch.equal(state[frozen], converted[frozen])  # loaded, then never trained
    sha = hashlib.sha256(open(official, "rb").read()).hexdigest()
    assert payload["init_from"]["sha256"] == sha and payload["init_from"]["kind"] == "official"
    client = MlflowClient(ws["uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["init.weights"] == official
    assert run.data.params["init.reinitialised"] == "4"  # 2 class heads, weight and bias
    assert float(run.data.params["init.loaded_fraction"]) > 0.99
    report = json.loads(open(client.download_artifacts(run.info.run_id, "init/transfer.json",
                                                       str(tmp_path))).read())
    assert {r["name"] for r in report["reinitialised"]} == {
        f"class_heads.{i}.{p}" for i in range(2) for p in ("weight", "bias")}
    version = client.get_model_version("tiny-finetuned", "1")
    assert version.tags["samdetr.finetuned_from"] == official
    assert version.tags["samdetr.finetuned_from_sha256"] == sha

    # The registered version as the start of the next fine-tuning (read as the driver does;
    # the workers' side is the same whatever the source).
    from pipelines.training.pretrained import fetch_pretrained

    registered = fetch_pretrained("models:/tiny-finetuned/1", ws["uri"])
    assert registered.kind == "samdetr" and registered.origin == "models:/tiny-finetuned/1"
    assert registered.config.model.num_classes == 8
    assert torch.equal(registered.state[frozen], converted[frozen])
    assert [c["id"] for c in registered.categories] == [c["id"] for c in payload["categories"]]
