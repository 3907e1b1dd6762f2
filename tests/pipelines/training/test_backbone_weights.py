"""The ImageNet weights a fresh training run starts from are read before any worker starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from support.train_case import tiny_settings, write_shards

from pipelines.training.backbone_weights import absolute_weights, check_backbone_weights
from pipelines.training.run import run_training
from pipelines.training.settings import TrainSettings
from samdetr.builder import build_model
from samdetr.config import BackboneConfig, ModelConfig


def test_a_random_backbone_is_a_choice_that_needs_no_file():
    check_backbone_weights(None, read=lambda name: pytest.fail("nothing may be read"))


def test_weights_from_torchvisions_cache_without_the_network(tmp_path, monkeypatch):
    """A torchvision weights name is read from the torch cache (TORCH_HOME) when the file is
    there: the check and the model load both use it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "hub" / "checkpoints" / Path(enum.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    trunk = torchvision.models.resnet18().state_dict()
    torch.save(trunk, cached)
    check_backbone_weights("ResNet18_Weights.IMAGENET1K_V1")
    config = ModelConfig(backbone=BackboneConfig(name="resnet18",
                                                 weights="ResNet18_Weights.IMAGENET1K_V1"),
                         hidden_dim=32, num_heads=4, num_salient_points=4, dim_feedforward=64,
                         num_encoder_layers=1, num_decoder_layers=1, num_queries=5,
                         num_classes=3)
    model = build_model(config, load_pretrained=True)
    assert torch.equal(model.backbone.body.conv1.weight, trunk["conv1.weight"])


def test_unreadable_weights_stop_the_run_with_what_to_do():
    def offline(name):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    with pytest.raises(ValueError) as caught:
        check_backbone_weights("ResNet50_Weights.IMAGENET1K_V1", read=offline)
    message = str(caught.value)
    for hint in ("could not be read", "Name or service not known", "TORCH_HOME",
                 "model.backbone.weights=/path/to/weights.pth", "model.backbone.weights=null"):
        assert hint in message
    with pytest.raises(ValueError, match="neither an existing file nor a torchvision"):
        check_backbone_weights("resnet50-imagenet.pth")  # no such file


def test_a_local_weights_file_is_made_absolute_once(tmp_path, monkeypatch):
    (tmp_path / "trunk.pth").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert absolute_weights("trunk.pth") == os.path.join(str(tmp_path), "trunk.pth")
    assert absolute_weights("ResNet50_Weights.IMAGENET1K_V1") == "ResNet50_Weights.IMAGENET1K_V1"
    assert absolute_weights(None) is None


def test_training_refuses_at_start_before_ray(tmp_path):
    plain = tiny_settings(write_shards(tmp_path, "train", 4, seed=0),
                          write_shards(tmp_path, "val", 2, seed=1), str(tmp_path / "ray"),
                          "weights", 1)
    plain["model"]["backbone"] = {**plain["model"].get("backbone", {}),
                                  "weights": str(tmp_path / "missing.pth")}
    with pytest.raises(ValueError, match="neither an existing file"):
        run_training(TrainSettings.from_dict(plain))
    assert not (tmp_path / "ray").exists()  # nothing was started or written
