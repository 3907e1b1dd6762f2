"""The Hydra configs compose into valid settings, and make_synthetic's entry point works.

The YAML under conf/ states only what differs from the dataclass defaults (the ``<group>/base``
nodes of :mod:`pipelines.config_defaults`), yet composes to exactly the configs it composed to
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

from pipelines import make_synthetic  # noqa: E402
from pipelines.config_defaults import register_defaults, settings_dict  # noqa: E402
from pipelines.preprocess import PreprocessConfig  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
ENTRY_POINTS = ("train", "preprocess", "evaluate", "make_synthetic", "tune", "predict",
                "promote")


def _compose(config_name: str, overrides: list[str], hydra_node: bool = False):
    register_defaults()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides,
                       return_hydra_config=hydra_node)


def _preprocess(overrides):
    plain = settings_dict(_compose("preprocess", overrides))
    data = plain.pop("data")
    return PreprocessConfig.from_dict(
        {**plain, "annotations": data["annotations"], "images": data["images"]}
    )


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
    summary = make_synthetic.run(settings_dict(cfg))
    assert summary["num_images"] == 5 and (tmp_path / "annotations.json").is_file()
    with pytest.raises(ValueError, match="make_synthetic: unknown field"):
        make_synthetic.run({"out_dir": str(tmp_path), "num_images": 1, "colour": "red"})


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


# Fingerprints of the configs composed from conf/ (first taken at commit 47a7925, where every
# default was restated in YAML; since then the new fields model.backbone.last_stage,
# tracking.parent_run_id, trainer.checkpoint_metric, model.roi_align,
# model.attention_kernel and the multiscale fields, the recipes experiment=shapes_small and
# sam_detr_r50_ms*,
# conf/study.yaml and conf/tune.yaml), with
# MLFLOW_TRACKING_URI and SAMDETR_STORAGE unset.
# A deliberate change of a composed config changes its fingerprint: update it here then.
FINGERPRINTS = {
    "train": "9bd7856ecdfbd771",
    "train experiment=shapes_small": "4e902bb9991f5399",
    "train experiment=sam_detr_r50_dc5_e12": "f8058cbcc810a8ad",
    "train experiment=sam_detr_r50_dc5_e50": "d8ca9bbe4613ec73",
    "train experiment=sam_detr_r50_dc5_smca_e12": "02862001f5ca59ce",
    "train experiment=sam_detr_r50_dc5_smca_e50": "5f2b557007cb48e3",
    "train experiment=sam_detr_r50_e12": "269a6ef951f27fea",
    "train experiment=sam_detr_r50_e50": "48204fd6934ec927",
    "train experiment=sam_detr_r50_smca_e12": "c6ee0527b5147186",
    "train experiment=sam_detr_r50_smca_e50": "5e65cf00466b10c1",
    "train model=baseline_r50": "210d4e83992f7b21",
    "train model=sam_detr_r50": "5143a4376a0627c6",
    "train model=sam_detr_r50_dc5": "83db6978f272242c",
    "train model=sam_detr_r50_dc5_smca": "0e876214d3d734a8",
    "train model=sam_detr_r50_smca": "cd6d2cc6623442a5",
    "train data=coco128": "f1298a1e2da5d237",
    "train data=coco2017": "290b57cffbe175ff",
    "train trainer=gpu": "61447bb7a8090c0d",
    "train tracking=server": "b580aac939ca394f",
    "train data=coco2017 model=sam_detr_r50_dc5_smca trainer=gpu tracking=server":
        "83975b7e356c6677",
    "preprocess": "e4f3779aab0ea1d9",
    "preprocess data=synthetic split=val": "84dd83cb6188b853",
    "preprocess data=coco2017 split=val": "6980c482e6d367d3",
    "evaluate shards=x": "1d2e693a3b8960b4",
    "promote shards=x": "9b342e7ac06f12b3",
    "submit": "26ac1eabb9a52c1d",
    "make_synthetic": "6bf71df80590184c",
    "study": "79d97b927e25f673",
    "tune": "fd1a8dca68524ee2",
    "tune sweep=m_smca_lr": "7a5832a95c05eedc",
    "tune experiment=sam_detr_r50_e12 data=coco2017 trainer=gpu tracking=server":
        "043e131c724029e6",
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
