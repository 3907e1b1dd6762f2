"""The Hydra configs compose into valid settings, and make_synthetic's entry point works.

The YAML under conf/ states only what differs from the dataclass defaults (the ``<group>/base``
nodes of :mod:`pipelines.cli.config_store`), yet composes to exactly the configs it composed to
when it restated them; and ``output_root`` (conf/paths.yaml) is the one place outputs go.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("hydra")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402

from pipelines.cli.config_store import register_defaults, settings_dict  # noqa: E402
from pipelines.data.shards import PreprocessSettings  # noqa: E402
from pipelines.data.synthetic import write_synthetic  # noqa: E402

CONF = Path(__file__).resolve().parents[3] / "conf"
ENTRY_POINTS = ("train", "preprocess", "evaluate", "make_synthetic", "tune", "predict",
                "promote", "export")


def _compose(config_name: str, overrides: list[str], hydra_node: bool = False):
    register_defaults()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides,
                       return_hydra_config=hydra_node)


def _preprocess(overrides):
    return PreprocessSettings.from_config(settings_dict(_compose("preprocess", overrides)))


@pytest.mark.parametrize("data", ["coco128", "synthetic", "coco2017"])
def test_preprocess_configs_compose(data):
    config = _preprocess([f"data={data}", "split=val"])
    assert config.split == "val" and config.output.endswith(f"/{data}/val")
    if data == "coco2017":
        assert config.annotations == "/data/coco/annotations/instances_val2017.json"
        assert config.images == "/data/coco/val2017"


def test_bad_override_is_rejected():
    with pytest.raises(ValueError, match="shard_size_mb"):
        _preprocess(["shard_size_mb=-1"])


def test_make_synthetic_entry(tmp_path):
    cfg = _compose("make_synthetic", [f"out_dir={tmp_path}", "num_images=5"])
    summary = write_synthetic(settings_dict(cfg))
    assert summary["num_images"] == 5 and (tmp_path / "annotations.json").is_file()
    with pytest.raises(ValueError, match="make_synthetic: unknown field"):
        write_synthetic({"out_dir": str(tmp_path), "num_images": 1, "colour": "red"})


# --- the composed configs are those of the YAML that restated every default ------------------

def _canonical(value):
    """JSON-comparable: every number a float (the dataclass defaults are typed, so e.g.
    tracking.retry_after_s is 30.0 where the old YAML said 30; == holds either way)."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else str(value)
    return value


def fingerprint(config_name: str, overrides: list[str]) -> str:
    """sha256 (16 hex digits) of the resolved job config, without ``output_root``."""
    plain = _canonical(settings_dict(_compose(config_name, overrides)))
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Fingerprints of the configs composed from conf/, with MLFLOW_TRACKING_URI and SAMDETR_STORAGE
# unset: a change to what a command composes to shows here. A deliberate change of a composed
# config changes its fingerprint: update it here then.
FINGERPRINTS = {
    # optim.freeze, optim.lr_groups and the init node (init.weights, init.min_loaded) joined
    # train, tune and study (#28: fine-tuning from a pretrained detector); then optim.schedule,
    # optim.min_lr_ratio, optim.warmup_steps and optim.warmup_start (#30: learning-rate
    # schedules), the official step drop by default; and trainer.early_stop_patience and
    # trainer.early_stop_min_delta (#30: early stopping), off by default, and trainer.fp16
    # (#30: float16 with loss scaling), off; trainer.accumulate (#30: gradient accumulation),
    # 1; trainer.ema_decay, ema_warmup_steps and ema_weights (#30: EMA), off; and
    # trainer.activation_checkpointing (#30), none.
    "train": "2e57fa82dc2bef95",
    "train experiment=shapes_small": "2ab2841783b68998",
    "train experiment=sam_detr_r50_dc5_e12": "a4eddbfab6a75196",
    "train experiment=sam_detr_r50_dc5_e50": "85e4889b4e4b65c6",
    "train experiment=sam_detr_r50_dc5_smca_e12": "c6a93d2ab2c088a5",
    "train experiment=sam_detr_r50_dc5_smca_e50": "33fff59849714ec7",
    "train experiment=sam_detr_r50_e12": "fb613f1604f2763e",
    "train experiment=sam_detr_r50_e50": "ef39bb61cf6efac6",
    "train experiment=sam_detr_r50_smca_e12": "32254e4cd0bbdd82",
    "train experiment=sam_detr_r50_smca_e50": "358a9faccc00fd72",
    "train model=baseline_r50": "e99e9f95d5f444db",
    "train model=sam_detr_r50": "5f48cf6eda7ef7d3",
    "train model=sam_detr_r50_dc5": "9e30a4670eed1477",
    "train model=sam_detr_r50_dc5_smca": "a59c5d88646fd2f5",
    "train model=sam_detr_r50_smca": "2bb785d1628375c2",
    "train data=coco128": "3f2f4d5425d72afc",
    "train data=coco2017": "f10d48775c7936fe",
    "train trainer=gpu": "f5ee9423db41bd5c",
    "train tracking=server": "576c2d5d8ce29d88",
    "train data=coco2017 model=sam_detr_r50_dc5_smca trainer=gpu tracking=server":
        "3a3dff3a4f1c43a9",
    # data.format, data.root and data.classes (and data.annotations / data.images, null unless
    # the data group sets them) joined preprocess's data node (#28: YOLO and VOC input); then
    # data.keep_classes, data.rename_classes, data.drop_emptied_images, data.val_fraction,
    # data.split_seed and data.split_from (#28: choosing classes, a seeded val split), all off
    # by default.
    "preprocess": "72ebe6373b534313",
    "preprocess data=synthetic split=val": "977f5dcbd75a86e0",
    "preprocess data=coco2017 split=val": "01c64ae1fb8d8aaf",
    "preprocess data=custom data.name=pets data.format=voc data.root=/data/pets-voc":
        "0237a426e8860bfa",
    "preprocess data=custom data.name=mine data.format=yolo data.annotations=/data/mine/data.yaml":
        "15a24e8a9bdfed86",
    "evaluate shards=x": "74f5a009fe477a97",
    # class_drop and class_min_gt (the per-class guard, #28) joined promote's settings.
    "promote shards=x": "8b5b00136eaf3451",
    "submit": "5eb3490e066d041b",
    # pipelines.export (#29): ExportSettings' defaults, output given.
    "export output=x.onnx": "012d422a326e09d7",
    "make_synthetic": "6bf71df80590184c",
    "study": "7e61b175f9d54006",
    "tune": "5d8ed638b93d1922",
    "tune sweep=m_smca_lr": "378e0ce2bd9e7093",
    "tune experiment=sam_detr_r50_e12 data=coco2017 trainer=gpu tracking=server":
        "da94d69e963fd6ed",
}


@pytest.mark.parametrize("combination", sorted(FINGERPRINTS))
def test_configs_compose_as_before(combination, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SAMDETR_STORAGE", raising=False)
    config_name, *overrides = combination.split()
    found = fingerprint(config_name, overrides)
    shown = OmegaConf.to_yaml(_compose(config_name, overrides), resolve=True)
    assert found == FINGERPRINTS[combination], f"{combination} now composes to:\n{shown}"


# --- one output root -------------------------------------------------------------------------

def _strings(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}{key}.")
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, path)
    elif isinstance(value, str):
        yield path.rstrip("."), value


def _run_dir(cfg) -> str:
    return OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"]


def test_outputs_is_named_in_one_place():
    named = sorted(str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")
                   if "outputs" in p.read_text())
    assert named == ["paths.yaml"]
    assert OmegaConf.load(CONF / "paths.yaml").output_root == "outputs"


@pytest.mark.parametrize("config_name, data", [
    *[(name, data) for name in ("train", "preprocess")
      for data in ("synthetic", "coco128", "coco2017")],
    ("evaluate", None), ("make_synthetic", None), ("tune", None), ("promote", None),
])
def test_one_override_moves_every_output(config_name, data, tmp_path):
    overrides = [f"output_root={tmp_path}"] + ([f"data={data}"] if data else []) + (
        ["shards=x"] if config_name == "evaluate" else []
    )
    cfg = _compose(config_name, overrides, hydra_node=True)
    assert _run_dir(cfg).startswith(f"{tmp_path}/hydra/{config_name}/")
    with open_dict(cfg):
        del cfg["hydra"]
    plain = settings_dict(cfg)
    assert "output_root" not in plain
    assert not [(k, v) for k, v in _strings(plain) if "outputs" in v]
    root = str(tmp_path)
    if config_name == "train":
        assert plain["data"]["train_shards"].startswith(f"{root}/shards/{data}/")
        assert plain["data"]["val_shards"].startswith(f"{root}/shards/{data}/")
        assert plain["trainer"]["storage_path"] == f"{root}/ray"
    if config_name == "preprocess":
        assert plain["output"] == f"{root}/shards/{data}/train"


@pytest.mark.parametrize("config_name", ENTRY_POINTS)
def test_outputs_by_default(config_name):
    cfg = _compose(config_name, ["shards=x"] if config_name == "evaluate" else [], True)
    assert _run_dir(cfg).startswith(f"outputs/hydra/{config_name}/")


# --- one registered model --------------------------------------------------------------------
def test_one_registered_model_name_flows_from_training_to_promotion(monkeypatch, tmp_path):
    """What train (tracking=server), the sweep and the demo register is what promote moves."""
    from pipelines.cli.demo import demo_settings
    from pipelines.promotion.gate import PromoteSettings
    from pipelines.training.settings import REGISTERED_MODEL

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registered = {
        "train tracking=server": settings_dict(_compose("train", ["tracking=server"])),
        "tune": settings_dict(_compose("tune", [])),
        "tune (cluster)": settings_dict(_compose("tune", [
            "experiment=sam_detr_r50_e12", "data=coco2017", "trainer=gpu", "tracking=server"])),
    }
    names = {key: value["tracking"]["registered_model"] for key, value in registered.items()}
    names["demo"] = demo_settings(tmp_path, None, 2, False)[0].tracking.registered_model
    promote = PromoteSettings(**settings_dict(_compose("promote", ["shards=x"])))
    names["promote"] = promote.registered_model
    assert set(names.values()) == {REGISTERED_MODEL}, names
