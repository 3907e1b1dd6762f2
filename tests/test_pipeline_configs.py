"""The Hydra configs compose into valid settings, and make_synthetic's entry point works."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("hydra")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pipelines import make_synthetic  # noqa: E402
from pipelines.preprocess import PreprocessConfig  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def _preprocess(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="preprocess", overrides=overrides)
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    data = plain.pop("data")
    plain.pop("hydra", None)
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
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="make_synthetic", overrides=[f"out_dir={tmp_path}", "num_images=5"]
        )
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("hydra", None)
    summary = make_synthetic.run(settings)
    assert summary["num_images"] == 5 and (tmp_path / "annotations.json").is_file()
    with pytest.raises(ValueError, match="make_synthetic: unknown field"):
        make_synthetic.run({"out_dir": str(tmp_path), "num_images": 1, "colour": "red"})
