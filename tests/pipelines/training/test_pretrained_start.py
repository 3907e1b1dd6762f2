"""init.weights on the driver: the settings, reading each kind of source, and the checks that
stop a run before any worker starts."""

from __future__ import annotations

import os

import pytest
import torch
from support.train_case import TINY_MODEL, tiny_settings

from pipelines.training.pretrained import check_start, fetch_pretrained, start_model
from pipelines.training.settings import InitSettings, TrainSettings
from samdetr.builder import build_model
from samdetr.checkpoint import save_checkpoint
from samdetr.config import DetectorConfig

#: A store no test here reaches: only a models:/ URI would be looked up there.
_NO_STORE = "sqlite:////nonexistent/mlflow.db"


def _settings(tmp_path, **changes) -> TrainSettings:
    plain = tiny_settings("/shards/train", "/shards/val", str(tmp_path / "ray"), "ft", 1)
    for key, value in changes.items():
        plain[key] = value if not isinstance(value, dict) else {**plain.get(key, {}), **value}
    return TrainSettings.from_dict(plain)


def _checkpoint(path, **model_changes) -> str:
    config = DetectorConfig.from_dict({"model": {**TINY_MODEL, **model_changes}})
    torch.manual_seed(0)
    return str(save_checkpoint(path, build_model(config), config,
                               categories=[{"id": 1, "name": "box"}]))


def test_init_settings_check_and_resolve(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="init.min_loaded must be a share in"):
        InitSettings(weights="a.pth", min_loaded=1.5)
    with pytest.raises(ValueError, match="init.weights"):
        InitSettings(weights="")
    with pytest.raises(ValueError, match="init: unknown field"):
        _settings(tmp_path, init={"from": "a.pth"})
    monkeypatch.chdir(tmp_path)
    assert InitSettings("ckpt/a.pth").resolved().weights == str(tmp_path / "ckpt" / "a.pth")
    for kept in ("models:/sam-detr@champion", "runs:/abc/model", "s3://bucket/a.pth"):
        assert InitSettings(kept).resolved().weights == kept
    settings = _settings(tmp_path, init={"weights": "models:/m/1", "min_loaded": 0.8})
    assert TrainSettings.from_dict(settings.to_dict()) == settings


def test_a_file_or_a_ray_checkpoint_folder_is_read_as_given(tmp_path):
    path = _checkpoint(tmp_path / "run" / "checkpoint.pt")
    for source in (path, str(tmp_path / "run")):
        pretrained = fetch_pretrained(source, _NO_STORE)
        assert pretrained.kind == "samdetr" and pretrained.origin == source
        assert pretrained.categories == ({"id": 1, "name": "box"},)


def test_sources_that_cannot_be_read_say_what_is_expected(tmp_path):
    with pytest.raises(ValueError, match=r"init.weights=.*absent.pth could not be read.*"
                                         r"models:/NAME@ALIAS"):
        fetch_pretrained(str(tmp_path / "absent.pth"), _NO_STORE)
    (tmp_path / "noise.pth").write_bytes(b"noise")
    with pytest.raises(ValueError, match="init.weights=.*noise.pth: .*not a safely loadable"):
        fetch_pretrained(str(tmp_path / "noise.pth"), _NO_STORE)
    with pytest.raises(ValueError, match="is not a model URI"):
        fetch_pretrained("models:/a/b/c", _NO_STORE)


def test_the_driver_refuses_a_file_of_another_architecture_before_training(tmp_path):
    other = _checkpoint(tmp_path / "other.pt", backbone={"name": "resnet34"}, hidden_dim=64)
    settings = _settings(tmp_path, init={"weights": other})
    with pytest.raises(ValueError, match=r"only \d+\.\d% of the model's weights.*resnet34 d64"):
        check_start(settings, fetch_pretrained(other, _NO_STORE))


def test_the_start_is_checked_and_described(tmp_path):
    same = _checkpoint(tmp_path / "same.pt", num_classes=5)
    settings = _settings(tmp_path, init={"weights": same}, optim={"freeze": ["backbone"]})
    start = check_start(settings, fetch_pretrained(same, _NO_STORE))
    assert start["counts"]["reinitialised"] == 4 and start["lineage"]["kind"] == "samdetr"
    assert start["lineage"]["model"].endswith("K5") and start["lineage"]["num_classes"] == 5
    assert start["lines"][0].startswith("loaded ")
    assert check_start(_settings(tmp_path), None) == {}
    with pytest.raises(ValueError, match="'decodr' names no parameter"):
        check_start(_settings(tmp_path, optim={"lr_groups": {"decodr": 1e-5}}), None)


def test_a_resumed_start_leaves_the_weights_to_the_checkpoint(tmp_path):
    same = _checkpoint(tmp_path / "same.pt")
    settings = _settings(tmp_path, init={"weights": same}, optim={"freeze": ["encoder"]})
    pretrained = fetch_pretrained(same, _NO_STORE)
    fresh, report = start_model(settings, pretrained)
    resumed, none = start_model(settings, pretrained, fresh=False)
    assert report.loaded_fraction == 1.0 and none is None
    name = "transformer.decoder.layers.0.linear1.weight"
    assert torch.equal(fresh.state_dict()[name], pretrained.state[name])
    assert not torch.equal(resumed.state_dict()[name], pretrained.state[name])
    assert not any(p.requires_grad for n, p in resumed.named_parameters()
                   if n.startswith("transformer.encoder."))
    assert os.path.isfile(same)


def _summary(categories, split=None) -> dict:
    return {"categories": [{"id": i, "name": n} for i, n in categories],
            "selection": {"split": split, "classes": None} if split else None}


def test_train_and_val_shards_must_come_from_the_same_classes_and_split():
    from pipelines.training.run import check_same_source

    carved = {"from": "train", "val_fraction": 0.2, "seed": 0,
              "images": {"train": 80, "val": 20}}
    same = [(0, "cat"), (1, "dog")]
    check_same_source(_summary(same, {**carved, "part": "train"}),
                      _summary(same, {**carved, "part": "val"}))
    check_same_source(_summary(same), _summary(same))  # not carved: nothing to compare
    with pytest.raises(ValueError, match=r"label different classes \(train: 0:cat, 1:dog; "
                                         r"val: 0:dog, 1:cat\)"):
        check_same_source(_summary(same), _summary([(0, "dog"), (1, "cat")]))
    other_seed = {**carved, "seed": 1, "part": "val"}
    with pytest.raises(ValueError, match="may share images"):
        check_same_source(_summary(same, {**carved, "part": "train"}), _summary(same, other_seed))
    with pytest.raises(ValueError, match="may share images"):  # both the train part
        check_same_source(_summary(same, {**carved, "part": "train"}),
                          _summary(same, {**carved, "part": "train"}))
