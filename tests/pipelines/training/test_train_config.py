"""The training configs compose into valid settings; bad settings and an unreachable MLflow
server fail at start with clear messages. The YAML states only what differs from the dataclass
defaults (:mod:`pipelines.cli.config_store`), and every field is overridable without ``+``."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

pytest.importorskip("hydra")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pipelines.cli.config_store import (  # noqa: E402
    default_classes,
    defaults_node,
    register_defaults,
    settings_dict,
)
from pipelines.training.settings import TrainSettings, flatten  # noqa: E402
from samdetr.config import PRESETS, preset  # noqa: E402

CONF = Path(__file__).resolve().parents[3] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose_cfg(overrides: list[str]):
    register_defaults()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _compose(overrides: list[str]) -> dict:
    return settings_dict(_compose_cfg(overrides))


def test_every_official_preset_has_an_experiment():
    assert set(PRESETS) | {"shapes_small"} == set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose_into_valid_settings(name, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = TrainSettings.from_dict(_compose([f"experiment={name}"]))
    assert TrainSettings.from_dict(settings.to_dict()) == settings  # what workers rebuild
    if name == "shapes_small":  # the from-scratch recipe (docs/training.md)
        assert not settings.trainer.use_gpu and settings.trainer.num_workers == 2
        backbone = settings.detector.model.backbone
        assert (backbone.norm, backbone.trainable_layers, backbone.last_stage) == (
            "group_norm", 0, 2)
        assert (settings.detector.loss.loss_class, settings.detector.loss.cost_class) == (5, 5)
        assert settings.detector.model.num_queries == 10 and settings.optim.lr == 5e-4
        assert settings.detector.model.smca
        return
    # The official recipes: the paper's architecture, schedule and batch split.
    expected = preset(name).model
    expected = dataclasses.replace(
        expected,
        backbone=dataclasses.replace(expected.backbone, weights="ResNet50_Weights.IMAGENET1K_V1"),
    )
    assert settings.detector.model == expected
    epochs = int(name.rsplit("_e", 1)[1])
    assert settings.trainer.epochs == epochs
    assert settings.optim.lr_drop_epochs == ((10,) if epochs == 12 else (40,))
    # The spec: "4 GPUs x 4 for R50; 8 x 1 for DC5" (so DC5's total batch is 8, not 16); the
    # official multiscale scripts: 8 GPUs x 2.
    expected_split = (8, 1) if "dc5" in name else (8, 2) if "_ms" in name else (4, 4)
    assert (settings.trainer.num_workers, settings.data.batch_size) == expected_split
    assert settings.trainer.global_batch == settings.global_batch == expected_split[0] * \
        expected_split[1]
    assert settings.trainer.use_gpu and settings.trainer.bf16
    assert settings.tracking.tracking_uri.startswith("http")


def test_default_config_is_the_local_cpu_run(monkeypatch):
    settings = TrainSettings.from_dict(_compose([]))
    assert settings.trainer.resources_per_worker() == {"CPU": 0.5}
    assert settings.data.train_shards.endswith("synthetic/train")
    params = flatten(settings.to_dict())
    assert params["model.backbone.name"] == "resnet18" and params["trainer.num_workers"] == "2"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert settings.tracking.resolved_uri() == "http://tracking:5000"


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.bf16=true", "bf16 needs use_gpu"),
        ("trainer.run_name='a b'", "run_name"),
        ("trainer.num_workers=0", "num_workers"),
        ("+trainer.gpus=1", "unknown field"),
        ("data.batch_size=0", "batch_size"),
        ("+data.train_transform.flip=0.3", "train_transform"),
        ("optim.lr_drop_epochs=[5,3]", "increasing"),
        ("optim.schedule=linear", "optim.schedule must be one of"),
        ("trainer.early_stop_patience=-1", "trainer.early_stop_patience"),
        ("trainer.fp16=true", "fp16 needs use_gpu"),
        ("trainer.early_stop_min_delta=-0.1", "trainer.early_stop_min_delta"),
        ("model.hidden_dim=30", "hidden_dim"),
        ("tracking.alias=best", "needs tracking.registered_model"),
    ],
)
def test_bad_settings_fail_clearly(override, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings.from_dict(_compose([override]))


def test_fp16_is_float16_autocast_on_gpus_and_excludes_bf16():
    import torch

    settings = TrainSettings.from_dict(_compose(["trainer=gpu", "trainer.bf16=false",
                                                 "trainer.fp16=true"]))
    assert settings.trainer.autocast_dtype == torch.float16
    with pytest.raises(ValueError, match="fp16 and trainer.bf16 are both set"):
        TrainSettings.from_dict(_compose(["trainer=gpu", "trainer.fp16=true"]))


def test_unreachable_tracking_server_fails_before_training(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import ray

    from pipelines.common.tracking import check_reachable
    from pipelines.training.run import run_training

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="unreachable"):
        check_reachable("http://127.0.0.1:9", timeout_s=2)
    assert time.perf_counter() - start < 10

    shards = _synthetic_shards(tmp_path)
    plain = _compose([
        f"data.train_shards={shards}", f"data.val_shards={shards}",
        "tracking.tracking_uri=http://127.0.0.1:9", f"trainer.storage_path={tmp_path}/ray",
    ])
    was_running = ray.is_initialized()
    with pytest.raises(ConnectionError, match="tracking.enabled=false"):
        run_training(TrainSettings.from_dict(plain))
    assert ray.is_initialized() == was_running  # nothing was started


def test_model_must_cover_the_data_categories(tmp_path):
    from pipelines.training.run import run_training

    shards = _synthetic_shards(tmp_path)
    plain = _compose([
        f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=4",
        "tracking.enabled=false",
    ])
    with pytest.raises(ValueError, match="model.num_classes=8"):
        run_training(TrainSettings.from_dict(plain))


# --- the YAML names only differences; every field stays overridable -------------------------

MISSING = object()
GROUP_FILES = sorted(
    (group, p.stem) for group in ("model", "optim", "trainer", "tracking")
    for p in (CONF / group).glob("*.yaml")
)


def _leaves(node: dict, prefix: str = "") -> dict:
    """``{"a.b": value}`` of a nested dict (an empty dict is a leaf of its own)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _at(node: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def _own_and_parents(group: str, name: str) -> tuple[dict, list[str]]:
    """What conf/<group>/<name>.yaml sets itself, and the options it starts from."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"), resolve=False)
    parents = [entry for entry in raw.pop("defaults", []) if entry != "_self_"]
    assert all(isinstance(p, str) for p in parents), f"{group}/{name}: {parents}"
    return raw, parents


def _composed(group: str, name: str) -> dict:
    """What option ``name`` of ``group`` composes to (unresolved), ``base`` being the
    dataclass defaults."""
    if name == "base":
        return defaults_node(default_classes()[group])
    own, parents = _own_and_parents(group, name)
    merged = OmegaConf.merge(*(_composed(group, p) for p in parents), own)
    return OmegaConf.to_container(merged, resolve=False)


def _starts_from_base(group: str, name: str) -> bool:
    return name == "base" or any(_starts_from_base(group, p)
                                 for p in _own_and_parents(group, name)[1])


def _restated(own: dict, inherited: dict) -> list[str]:
    return [f"{key}: {value!r}" for key, value in _leaves(own).items()
            if _at(inherited, key) is not MISSING and _at(inherited, key) == value]


@pytest.mark.parametrize("group, name", GROUP_FILES, ids=lambda v: str(v))
def test_group_yaml_states_only_differences(group, name):
    own, parents = _own_and_parents(group, name)
    assert _starts_from_base(group, name), f"{group}/{name}.yaml must start from {group}/base"
    inherited = OmegaConf.to_container(
        OmegaConf.merge(*(_composed(group, p) for p in parents)), resolve=False
    )
    restated = _restated(own, inherited)
    assert not restated, f"conf/{group}/{name}.yaml restates what it inherits: {restated}"


def test_train_yaml_states_only_differences():
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml"), resolve=False)
    chosen = {k: v for entry in raw.pop("defaults") if isinstance(entry, dict)
              for k, v in entry.items()}
    raw.pop("hydra", None)
    assert set(raw) <= set(default_classes()), sorted(raw)
    for block, own in raw.items():
        inherited = OmegaConf.to_container(OmegaConf.merge(
            defaults_node(default_classes()[block]), _composed(block, chosen[block]),
        ), resolve=False)
        restated = _restated(own, inherited)
        assert not restated, f"conf/train.yaml {block}: restates a default: {restated}"


def test_restating_a_default_is_caught():
    own, _ = _own_and_parents("model", "small")
    inherited = _composed("model", "sam_detr_r50")
    restating = {**own, "num_heads": 8, "backbone": {"name": "resnet18", "dilation": False}}
    assert sorted(_restated(restating, inherited)) == ["backbone.dilation: False", "num_heads: 8"]
    assert _restated(own, inherited) == []


def _other(value):
    """A value unlike ``value``, and how the command line writes it."""
    if isinstance(value, bool):
        return (not value), str(not value).lower()
    if isinstance(value, (int, float)):
        return value + 3, str(value + 3)
    if isinstance(value, list):
        changed = [*value, value[-1] if value else 7]
        return changed, "[" + ",".join(str(v) for v in changed) + "]"
    if value == {}:
        return {"max_size": 99}, "{max_size:99}"
    return "changed", "changed"  # strings, null, ??? (mandatory)


def _field_overrides() -> dict[str, tuple]:
    out = {}
    for group, cls in default_classes().items():
        for key, value in _leaves(defaults_node(cls), f"{group}.").items():
            out[key] = _other(value)
    return out


@pytest.mark.parametrize("experiment", [None, "sam_detr_r50_e12"])
def test_every_dataclass_field_is_overridable_without_plus(experiment):
    fields = _field_overrides()
    assert len(fields) > 60 and "model.backbone.dilation" in fields and "loss.focal_gamma" in fields
    chosen = [f"experiment={experiment}"] if experiment else []
    # optim.lr_groups is {} by default: a part is a new key, +optim.lr_groups.decoder=1e-5
    # (test_fine_tuning_settings_reach_the_settings).
    fields.pop("optim.lr_groups")
    if experiment:
        # COCO's data.train_transform is {} (DETR's sizes): a key put into an empty mapping is
        # new to Hydra, so +data.train_transform.scales=[...] it is (as it always was).
        fields.pop("data.train_transform")
    cfg = _compose_cfg(chosen + [f"{key}={text}" for key, (_, text) in fields.items()])
    for key, (value, _) in fields.items():
        found = OmegaConf.select(cfg, key)
        found = OmegaConf.to_container(found) if OmegaConf.is_config(found) else found
        if isinstance(value, dict):  # a mapping given on the command line merges into it
            found = {k: found[k] for k in value}
        assert found == value, key


def test_command_line_overrides_reach_the_settings():
    settings = TrainSettings.from_dict(_compose([
        "model.num_queries=100", "loss.cost_class=1", "trainer.epochs=3", "optim.lr=2e-4",
        "tracking.enabled=false", "data.shuffle_buffer=0", "model.backbone.dilation=false",
    ]))
    assert settings.detector.model.num_queries == 100
    assert settings.detector.loss.cost_class == 1 and settings.trainer.epochs == 3
    assert settings.optim.lr == 2e-4 and not settings.tracking.enabled
    assert settings.data.shuffle_buffer == 0


def test_fine_tuning_settings_reach_the_settings():
    settings = TrainSettings.from_dict(_compose([
        "init.weights=models:/sam-detr@champion", "init.min_loaded=0.9",
        "optim.freeze=[backbone,encoder]", "+optim.lr_groups.class_heads=1e-3",
    ]))
    assert settings.init.weights == "models:/sam-detr@champion"
    assert settings.init.min_loaded == 0.9
    assert settings.optim.freeze == ("backbone", "encoder")
    assert settings.optim.lr_groups == {"class_heads": 1e-3}


def test_a_data_group_may_carry_what_only_preprocessing_reads():
    """A user's own data group names its source for preprocess (format, root, classes): the
    same group then trains, and training leaves those keys out."""
    plain = _compose(["tracking.enabled=false"])
    preprocess_only = {"format": "voc", "root": "/data/pets", "classes": ["cat", "dog"],
                       "annotations": None, "images": None, "keep_classes": ["cat"],
                       "rename_classes": {"cat": "feline"}, "drop_emptied_images": True,
                       "val_fraction": 0.2, "split_seed": 3, "split_from": "train"}
    plain["data"].update(preprocess_only)
    data = TrainSettings.from_dict(plain).to_dict()["data"]
    assert not set(preprocess_only) & set(data)


def test_a_misspelt_field_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="num_querys"):
        _compose_cfg(["model.num_querys=100"])


def test_the_defaults_are_the_dataclasses():
    plain = _compose(["model=sam_detr_r50", "optim=official", "tracking=local"])
    for group in ("model", "loss", "optim", "tracking"):
        assert plain[group] == defaults_node(default_classes()[group]), group


def _synthetic_shards(root: Path) -> str:
    from samdetr.data.synthetic import write_synthetic_shards

    write_synthetic_shards(root / "data", root / "shards", 4, image_size=(64, 96), max_objects=2)
    return str(root / "shards")


def test_a_recipe_refuses_another_global_batch_unless_it_is_stated(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = ["experiment=sam_detr_r50_e12"]
    with pytest.raises(ValueError, match=r"trainer.num_workers=8 x data.batch_size=4 x "
                       r"trainer.accumulate=1 makes a global batch of 32, but .* "
                       r"trainer.global_batch=16. Use data.batch_size=2; or .* "
                       r"trainer.global_batch=32"):
        TrainSettings.from_dict(_compose(recipe + ["trainer.num_workers=8"]))
    with pytest.raises(ValueError, match="whose product is 16"):
        TrainSettings.from_dict(_compose(recipe + ["trainer.num_workers=3"]))
    # Fewer GPUs than the recipe's: a smaller global batch, or accumulation to make it whole.
    with pytest.raises(ValueError, match=r"Use data.batch_size=8 or trainer.accumulate=2;"):
        TrainSettings.from_dict(_compose(recipe + ["trainer.num_workers=2"]))
    accumulated = TrainSettings.from_dict(_compose(recipe + ["trainer.num_workers=2",
                                                             "trainer.accumulate=2"]))
    assert accumulated.global_batch == 16
    split = TrainSettings.from_dict(_compose(recipe + ["trainer.num_workers=8",
                                                       "data.batch_size=2"]))
    assert split.global_batch == 16
    stated = TrainSettings.from_dict(_compose(recipe + ["trainer.num_workers=8",
                                                        "trainer.global_batch=32"]))
    assert stated.global_batch == 32 and flatten(stated.to_dict())["trainer.global_batch"] == "32"
    free = TrainSettings.from_dict(_compose(["trainer.num_workers=3"]))  # no recipe: any batch
    assert free.trainer.global_batch is None and free.global_batch == 12
