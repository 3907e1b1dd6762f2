"""Saving and loading this project's checkpoints."""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch
from support import tiny
from torch import nn

from samdetr.builder import build_model
from samdetr.checkpoint import FORMAT, VERSION, load_checkpoint, read_checkpoint, save_checkpoint
from samdetr.config import DetectorConfig, LossConfig


def tiny_config(**changes) -> DetectorConfig:
    # A non-default loss config too, so the round trip covers both halves of the config.
    config = tiny.tiny_config(**{"num_classes": 7, **changes})
    return dataclasses.replace(config, loss=LossConfig(loss_giou=3.0))


VARIANTS = {
    "sam": {},
    "smca": {"smca": True, "num_salient_points": 8},
    "baseline": {"decoder": "baseline", "input_proj_groupnorm": True},
}


@pytest.fixture
def images():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(3, 64, 64, generator=gen), torch.randn(3, 48, 80, generator=gen)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip(tmp_path, images, variant):
    config = tiny_config(**VARIANTS[variant])
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = model(images)
    (out["pred_logits"].sum() + out["pred_boxes"].sum()).backward()
    optimizer.step()  # weights move away from their init, optimizer state gets filled
    model.eval()
    with torch.no_grad():
        expected = model(images)

    path = save_checkpoint(
        tmp_path / "ckpt.pth", model, config, epoch=3, optimizer=optimizer.state_dict()
    )
    assert path == tmp_path / "ckpt.pth"
    torch.manual_seed(123)  # the rebuilt model's random init must not matter
    loaded, loaded_config, extra = load_checkpoint(path)
    assert loaded_config == config
    assert set(extra) == {"epoch", "optimizer"}
    assert extra["epoch"] == 3 and isinstance(extra["epoch"], int)

    state = optimizer.state_dict()
    assert extra["optimizer"]["param_groups"] == state["param_groups"]
    assert set(extra["optimizer"]["state"]) == set(state["state"])
    for key, value in state["state"].items():
        for name, tensor in value.items():
            assert torch.equal(extra["optimizer"]["state"][key][name], tensor), (key, name)
    # The saved optimizer state is usable by a fresh optimizer over the rebuilt model.
    fresh = torch.optim.AdamW([p for p in loaded.parameters() if p.requires_grad], lr=1e-3)
    fresh.load_state_dict(extra["optimizer"])

    loaded.eval()
    with torch.no_grad():
        got = loaded(images)
    keys = ["pred_logits", "pred_boxes"] + (["salient_points"] if variant != "baseline" else [])
    assert ("salient_points" in got) == (variant != "baseline")
    for key in keys:
        assert torch.equal(got[key], expected[key]), key
    for ours, theirs in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert ours[0] == theirs[0] and torch.equal(ours[1], theirs[1]), ours[0]


def test_file_is_weights_only_loadable(tmp_path):
    config = tiny_config()
    path = save_checkpoint(tmp_path / "a.pth", build_model(config), config, note="hello")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["version"] == VERSION
    assert payload["config"] == config.to_dict()
    assert payload["note"] == "hello"
    assert DetectorConfig.from_dict(payload["config"]) == config
    assert all(isinstance(v, torch.Tensor) for v in payload["model"].values())


def test_non_samdetr_file_points_to_load_official(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": build_model(tiny_config()).state_dict(), "epoch": 1}, path)
    with pytest.raises(ValueError, match="load_official"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="not a samdetr checkpoint"):
        load_checkpoint(path)


def test_wrong_version(tmp_path):
    path = tmp_path / "v.pth"
    torch.save({"format": FORMAT, "version": VERSION + 1}, path)
    with pytest.raises(ValueError, match="version"):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "folder.pth")


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="not a readable samdetr checkpoint"):
        load_checkpoint(path)


class Arbitrary:
    """A class torch must refuse to unpickle under weights_only."""

    def __init__(self):
        self.value = 1


def test_pickled_object_is_refused(tmp_path):
    config = tiny_config()
    path = tmp_path / "evil.pth"
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "model": build_model(config).state_dict(),
        "hook": Arbitrary(),
    }
    torch.save(payload, path)
    with pytest.raises(ValueError, match="not a readable samdetr checkpoint"):
        load_checkpoint(path)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    config = tiny_config()
    model = build_model(config)
    folder = tmp_path / "deep" / "run"
    for epoch in range(2):  # the second save replaces the first
        save_checkpoint(folder / "last.pth", model, config, epoch=epoch)
    assert sorted(p.name for p in folder.iterdir()) == ["last.pth"]
    assert load_checkpoint(folder / "last.pth")[2]["epoch"] == 1


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    config = tiny_config()
    model = build_model(config)
    path = save_checkpoint(tmp_path / "last.pth", model, config, epoch=1)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises for an unpicklable value
        save_checkpoint(path, model, config, epoch=2, bad=lambda: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]
    assert path.read_bytes() == before


def test_reserved_extra_names(tmp_path):
    config = tiny_config()
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pth", build_model(config), config, version=2)
    with pytest.raises(TypeError, match="DetectorConfig"):
        save_checkpoint(tmp_path / "x.pth", build_model(config), config.to_dict())
    assert not list(tmp_path.iterdir())


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the real model under ``.module``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def test_wrapped_model_stores_inner_keys(tmp_path):
    config = tiny_config()
    model = build_model(config)
    path = save_checkpoint(tmp_path / "w.pth", Wrapper(model), config)
    stored = torch.load(path, weights_only=True)["model"]
    assert list(stored) == list(model.state_dict())
    assert not any(k.startswith("module.") for k in stored)
    loaded, _, _ = load_checkpoint(path)
    assert torch.equal(loaded.reference_boxes.weight, model.reference_boxes.weight)


def test_state_dict_is_complete(tmp_path):
    """A checkpoint missing a tensor does not load silently."""
    config = tiny_config()
    path = save_checkpoint(tmp_path / "c.pth", build_model(config), config)
    payload = torch.load(path, weights_only=True)
    payload["model"] = collections.OrderedDict(list(payload["model"].items())[1:])
    torch.save(payload, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_checkpoint(path)


def test_a_checkpoint_that_offers_its_moving_average_loads_those_weights(tmp_path):
    from samdetr.engine.ema import EmaConfig, ModelEma
    from samdetr.pretrained import read_pretrained

    config = tiny_config()
    torch.manual_seed(0)
    model = build_model(config)
    ema = ModelEma(model, EmaConfig(decay=0.5, warmup_steps=0))
    ema.update(model)
    with torch.no_grad():  # the trained weights move on; the average stays behind
        for p in model.parameters():
            p.add_(1.0)
    saved = {"ema": ema.state_dict()}
    as_ema = save_checkpoint(tmp_path / "ema.pth", model, config, weights="ema", **saved)
    as_raw = save_checkpoint(tmp_path / "raw.pth", model, config, weights="raw", **saved)
    loaded, _, extra = load_checkpoint(as_ema)
    assert extra["weights"] == "ema" and extra["ema"]["updates"] == 1
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, ema.module.state_dict()[name]), name
    for name, value in load_checkpoint(as_raw)[0].state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    # Fine-tuning from the checkpoint starts from the same weights.
    assert torch.equal(read_pretrained(as_ema).state["input_proj.0.weight"],
                       ema.module.state_dict()["input_proj.0.weight"])
    broken = save_checkpoint(tmp_path / "broken.pth", model, config, weights="ema")
    with pytest.raises(ValueError, match="weights='ema' but holds no such weights"):
        load_checkpoint(broken)
