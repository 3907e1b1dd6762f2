"""Sweep settings: validation, the search space Tune gets, each trial's settings, the resource
check, and the configs under conf/sweep/ composed through conf/tune.yaml."""

from __future__ import annotations

import dataclasses
import os

import pytest

pytest.importorskip("ray")
pytest.importorskip("hydra")

from hydra import compose, initialize_config_dir  # noqa: E402
from ray import tune  # noqa: E402

from pipelines.cli.config_store import register_defaults, settings_dict  # noqa: E402
from pipelines.sweeps.settings import (  # noqa: E402
    SweepSettings,
    apply_params,
    check_against,
    leaves,
    runs_root,
    search_space,
    trial_settings,
)
from pipelines.sweeps.tuner import resource_warnings  # noqa: E402
from pipelines.training.settings import TrainSettings  # noqa: E402

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "..", "conf")
M_SMCA = {
    "space": {"model": {"num_salient_points": {"grid": [1, 2, 4, 8, 16]}}},
    "options": {"smca": {"off": {"model": {"smca": False}},
                         "beta8": {"model": {"smca": True, "smca_beta": 8.0}}}},
}


def _compose(overrides: list[str]) -> tuple[SweepSettings, TrainSettings]:
    register_defaults()
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        plain = settings_dict(compose(config_name="tune", overrides=overrides))
    return SweepSettings.from_dict(plain.pop("sweep")), TrainSettings.from_dict(plain)


def test_the_default_sweep_is_m_by_smca_on_the_from_scratch_recipe():
    sweep, base = _compose([])
    assert leaves(sweep.space) == {"model.num_salient_points": ("grid", [1, 2, 4, 8, 16])}
    assert set(sweep.options["smca"]) == {"off", "beta8"}
    assert sweep.scheduler.name == "asha" and sweep.alias == "challenger"
    assert base.detector.model.backbone.last_stage == 2  # experiment=shapes_small
    assert base.tracking.registered_model == "sam-detr"
    check_against(sweep, base)  # every M divides the recipe's width 64


def test_a_sweep_of_an_official_recipe_trains_as_the_recipe_says(monkeypatch):
    """The local shapes sweep's epochs, folders and CPU shares (conf/sweep_recipe/) apply to
    its recipe only: a 50-epoch recipe's trials train 50 epochs on its GPU workers."""
    monkeypatch.setenv("SAMDETR_STORAGE", "s3://b/samdetr")
    sweep, base = _compose(["experiment=sam_detr_r50_e50"])
    assert base.trainer.epochs == 50 and base.optim.lr_drop_epochs == (40,)
    assert base.trainer.use_gpu and base.trainer.cpus_per_worker == 4
    assert base.trainer.storage_path == "s3://b/samdetr/ray"
    assert sweep.make_data is None and sweep.trial_cpus == 1
    local_sweep, local = _compose([])
    assert local.trainer.epochs == 12 and local.trainer.storage_path.endswith("/tune")
    assert local_sweep.make_data == {"train": 320, "val": 80}


def test_m_smca_lr_adds_a_sampled_learning_rate():
    sweep, _ = _compose(["sweep=m_smca_lr"])
    assert leaves(sweep.space)["optim.lr"] == ("loguniform", [1.0e-4, 1.0e-3])
    assert sweep.num_samples == 2 and sweep.name == "m_smca_lr"
    space = search_space(sweep)
    assert isinstance(space["optim.lr"], tune.search.sample.Float)
    assert space["smca"] == {"grid_search": ["off", "beta8"]}


def test_command_line_overrides_reach_the_space():
    sweep, _ = _compose(["sweep.space.model.num_salient_points.grid=[2,4]",
                         "+sweep.options.smca.beta4={model: {smca: true, smca_beta: 4.0}}"])
    assert search_space(sweep)["model.num_salient_points"] == {"grid_search": [2, 4]}
    assert list(sweep.options["smca"]) == ["off", "beta8", "beta4"]


@pytest.mark.parametrize("change, message", [
    ({"space": {"model": {"num_salient_points": {"grid": [3]}}}},
     r"sweep.space.model.num_salient_points.grid: 3 does not make valid settings: "
     r".*must divide hidden_dim=64"),
    ({"space": {"model": {"no_such": {"grid": [1]}}}}, "is not a training setting"),
    ({"space": {"trainer": {"run_name": {"grid": ["a"]}}}}, "sets trainer.run_name per trial"),
    ({"options": {"smca": {"on": {"model": {"smca": True, "decoder": "baseline"}}}}},
     "sweep.options.smca.on does not make valid settings: .*needs decoder='sam'"),
])
def test_values_that_make_invalid_settings_are_refused_before_anything_runs(change, message):
    _, base = _compose([])
    sweep = SweepSettings.from_dict({**M_SMCA, **change})
    with pytest.raises(ValueError, match=message):
        check_against(sweep, base)


@pytest.mark.parametrize("node, message", [
    ({}, "nothing to search"),
    ({"space": {"model": {"num_salient_points": {"grid": [2], "choice": [4]}}}},
     "exactly one of"),
    ({"space": {"model": {"num_salient_points": {"grid": [2, 2]}}}}, "lists a value twice"),
    ({"space": {"optim": {"lr": {"loguniform": [0, 1e-3]}}}}, "needs low > 0"),
    ({"space": {"optim": {"lr": {"uniform": [1e-3, 1e-4]}}}}, "low < high"),
    ({"space": {"model": {"num_queries": {"randint": [5.5, 9]}}}}, "needs integers"),
    ({"space": {"tracking": {"experiment": {"grid": ["a"]}}}}, "varies the groups"),
    ({"options": {"smca": {False: {"model": {"smca": False}}}}}, 'quote YAML words'),
    ({"options": {"smca": {"x": {"tracking": {}}}}}, "must map settings of"),
    ({**M_SMCA, "metric": "loss"}, "sweep.metric must be one of"),
    ({**M_SMCA, "algorithm": "hyperopt"}, "sweep.algorithm must be one of"),
    ({**M_SMCA, "max_concurrent_trials": 0}, "max_concurrent_trials must be an integer >= 1"),
    ({**M_SMCA, "trial_cpus": 0}, "trial_cpus must be > 0"),
    ({**M_SMCA, "scheduler": {"name": "hyperband"}}, "scheduler.name must be one of"),
    ({**M_SMCA, "scheduler": {"grace_period": 0}}, "grace_period must be an integer >= 1"),
    ({**M_SMCA, "scheduler": {"reduction_factor": 1}}, "reduction_factor must be > 1"),
    ({**M_SMCA, "make_data": {"train": 3}}, "sweep.make_data must be"),
    ({**M_SMCA, "name": "a b"}, "sweep.name must be"),
    ({**M_SMCA, "typo": 1}, r"unknown field\(s\) \['typo'\]"),
])
def test_bad_sweep_settings_get_clear_errors(node, message):
    with pytest.raises(ValueError, match=message):
        SweepSettings.from_dict(node)


def test_a_trial_gets_its_params_its_own_run_and_no_registry_access():
    sweep, base = _compose(["tracking.alias=candidate"])
    base = base.resolved()
    params = {"model.num_salient_points": 4, "smca": "beta8"}
    settings = trial_settings(base.to_dict(), sweep, params, "abc12_00003", "parent-id")
    model = settings.detector.model
    assert (model.num_salient_points, model.smca, model.smca_beta) == (4, True, 8.0)
    assert settings.trainer.run_name == "m_smca-abc12_00003"
    assert settings.trainer.storage_path == runs_root(base.trainer.storage_path, "m_smca")
    assert settings.trainer.storage_path.endswith("/tune/m_smca/runs")
    tracking = settings.tracking
    assert (tracking.registered_model, tracking.alias, tracking.log_model) == (None, None, False)
    assert tracking.parent_run_id == "parent-id"
    # The base is not changed by applying a trial's params.
    assert apply_params(base.to_dict(), sweep, {"smca": "off"})["model"]["smca"] is False
    assert base.detector.model.smca is True


def test_optuna_gets_choices_instead_of_grids():
    sweep = SweepSettings.from_dict({**M_SMCA, "algorithm": "optuna"})
    space = search_space(sweep)
    assert isinstance(space["model.num_salient_points"], tune.search.sample.Categorical)
    assert isinstance(space["smca"], tune.search.sample.Categorical)


def test_trials_that_cannot_all_fit_the_cluster_are_warned_about():
    sweep, base = _compose([])  # 1 x (0.25 + 2 x 0.25) CPUs: 1.25 left of this machine's 2
    assert resource_warnings(sweep, base, {"CPU": 2.0}) == []
    sweep = dataclasses.replace(sweep, max_concurrent_trials=2)  # 1.5: less than 1 CPU left
    (warning,) = resource_warnings(sweep, base, {"CPU": 2.0})
    assert "take 1.5 CPUs" in warning and "of the cluster's 2" in warning
    assert resource_warnings(sweep, base, {"CPU": 2.5}) == []
    sweep = dataclasses.replace(sweep, max_concurrent_trials=3)
    base = dataclasses.replace(base, trainer=dataclasses.replace(
        base.trainer, use_gpu=True, gpus_per_worker=1.0, num_workers=2))
    warned = resource_warnings(sweep, base, {"CPU": 64.0, "GPU": 4.0})
    assert any("need 6 GPUs; the cluster has 4" in w for w in warned)


def test_optuna_suggests_trials_that_make_valid_settings():
    pytest.importorskip("optuna")
    from pipelines.sweeps.tuner import _search_alg

    sweep, base = _compose(["sweep=m_smca_lr", "sweep.algorithm=optuna"])
    searcher = _search_alg(sweep)
    assert type(searcher).__name__ == "OptunaSearch"
    assert searcher.set_search_properties("AP", "max", search_space(sweep))
    plain = base.resolved().to_dict()
    for number in range(3):
        params = searcher.suggest(f"t{number}")
        assert set(params) == {"model.num_salient_points", "smca", "optim.lr"}
        assert 1e-4 <= params["optim.lr"] <= 1e-3
        settings = trial_settings(plain, sweep, params, f"x_{number:05d}", None)
        assert settings.detector.model.num_salient_points == params["model.num_salient_points"]


@pytest.mark.parametrize("change, message", [
    ({"name": "coco2017"}, "generates synthetic shapes, but data.name is 'coco2017'"),
    ({"train_shards": "/x/shards/train", "val_shards": "/y/shards/val"}, "under the same"),
    ({"train_shards": "/x/train"}, r"data.train_shards='/x/train' is not such a folder"),
    ({"train_shards": "s3://b/shards/train"}, "writes local shards"),
])
def test_generated_shapes_go_only_into_synthetic_shard_folders(change, message):
    from pipelines.data.shapes import shapes_for

    _, base = _compose([])
    data = dataclasses.replace(base.data, **change)
    with pytest.raises(ValueError, match=message):
        shapes_for(data, {"train": 4, "val": 2}, "sweep.make_data")
