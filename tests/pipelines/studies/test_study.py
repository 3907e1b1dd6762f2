"""The convergence study end to end on Ray Train: conf/study.yaml with the shapes_small recipe,
one seed, one epoch, two variants, nested under one MLflow parent run; a re-run skips them."""

from __future__ import annotations

import dataclasses
import os

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

import ray  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from support.train_case import write_shards  # noqa: E402

from pipelines.cli.config_store import register_defaults, settings_dict  # noqa: E402
from pipelines.studies.report import BEGIN, END  # noqa: E402
from pipelines.studies.run import StudySettings, plan_runs, run_study, study_fields  # noqa: E402
from pipelines.training.settings import TrainSettings  # noqa: E402

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "..", "conf")


def _compose(overrides: list[str]) -> tuple[StudySettings, TrainSettings]:
    register_defaults()
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        plain = settings_dict(compose(config_name="study", overrides=overrides))
    study = StudySettings(**study_fields(plain.pop("study")))
    return study, TrainSettings.from_dict(plain)


def test_the_default_study_is_three_variants_by_three_seeds_of_the_recipe():
    study, base = _compose([])
    runs = plan_runs(study, base)
    assert len(runs) == 9 and study.report == "docs/convergence.md"
    assert {r.settings.detector.model.decoder for r in runs} == {"baseline", "sam"}
    recipe = base.detector.model
    assert recipe.backbone.norm == "group_norm" and recipe.backbone.last_stage == 2
    assert not base.tracking.log_model and base.tracking.experiment == "samdetr-study"


@pytest.mark.slow
def test_study_trains_every_run_once_under_one_parent(tmp_path):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    train = write_shards(tmp_path, "train", 8, seed=0)
    val = write_shards(tmp_path, "val", 4, seed=1)
    report = tmp_path / "docs" / "my-study.md"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study, base = _compose([
        "~study.variants.sam_smca", "study.seeds=[5]", "study.make_data=null",
        f"study.report={report}", "study.name=t1", "trainer.epochs=1", "trainer.num_pictures=0",
        f"data.train_shards={train}", f"data.val_shards={val}",
        f"trainer.storage_path={tmp_path / 'ray'}", f"tracking.tracking_uri={uri}",
        f"tracking.artifact_location={tmp_path / 'artifacts'}",
    ])
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        record = run_study(study, base, "python -m pipelines.study (test)")
        assert sorted(record["runs"]) == ["baseline-s5", "sam-s5"]
        for entry in record["runs"].values():
            assert [h["epoch"] for h in entry["history"]] == [0.0]
            assert 0.0 <= entry["history"][0]["AP50"] <= 1.0 and entry["seconds"] > 0
        client = MlflowClient(uri)
        parent = record["parent_run_id"]
        children = client.search_runs(
            [client.get_experiment_by_name("samdetr-study").experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}'")
        assert sorted(c.info.run_name for c in children) == ["t1-baseline-s5", "t1-sam-s5"]
        assert {c.info.run_id for c in children} == {
            e["mlflow_run_id"] for e in record["runs"].values()}
        assert {c.data.params["model.decoder"] for c in children} == {"baseline", "sam"}
        artifacts = {a.path for a in client.list_artifacts(parent)}
        assert {"results.csv", "convergence.png", "convergence.md"} <= artifacts
        # The report links the plot written beside it, and names the commit that trained.
        text = report.read_text()
        assert "](my-study.png)" in text and (tmp_path / "docs" / "my-study.png").is_file()
        assert "- **commit**: " in text
        assert [m.step for m in client.get_metric_history(parent, "AP50_mean.sam")] == [0]
        assert client.get_run(parent).info.status == "FINISHED"
        text = report.read_text()
        assert BEGIN in text and END in text and "| 1 |" in text
        assert report.with_suffix(".png").stat().st_size > 1000

        # A re-run trains nothing and keeps a hand-written reading below the markers.
        report.write_text(text + "\n## Reading\nby hand\n")
        again = run_study(study, base, "python -m pipelines.study (test)")
        assert again["parent_run_id"] == parent and again["runs"] == record["runs"]
        assert "by hand" in report.read_text()
        assert len(client.search_runs([children[0].info.experiment_id])) == 3

        # The same study name with other training settings is refused before anything runs.
        changed = dataclasses.replace(base, optim=dataclasses.replace(base.optim, lr=1e-3))
        refused = r"(?s)run 't1-baseline-s5' exists .*optim.lr: 0.0005 -> 0.001"
        with pytest.raises(ValueError, match=refused):
            run_study(study, changed, "python -m pipelines.study (test)")
    finally:
        ray.shutdown()
