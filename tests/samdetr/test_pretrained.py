"""Starting a model from pretrained weights: what loads, what is re-made, what is refused."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
from support.tiny import tiny_config
from torch import nn

from samdetr.builder import build_model
from samdetr.checkpoint import save_checkpoint
from samdetr.config import BackboneConfig
from samdetr.engine.reproducibility import seed_everything
from samdetr.official import convert_state_dict
from samdetr.official_fixture import official_args, official_state_dict
from samdetr.pretrained import describe_model, read_pretrained, transfer_weights

PRIOR = -math.log(0.99 / 0.01)


def _saved(tmp_path: Path, config, seed: int = 0, **extra) -> tuple[nn.Module, Path]:
    seed_everything(seed)
    model = build_model(config)
    with torch.no_grad():  # weights no fresh model has (a trained one), so a load is visible
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return model, save_checkpoint(tmp_path / "source.pt", model, config, **extra)


def test_another_class_count_keeps_all_but_the_class_heads(tmp_path):
    source, path = _saved(tmp_path, tiny_config(num_classes=5),
                          categories=[{"id": i, "name": f"c{i}"} for i in range(5)])
    pretrained = read_pretrained(path)
    assert pretrained.kind == "samdetr" and pretrained.config.model.num_classes == 5
    assert [c["name"] for c in pretrained.categories] == [f"c{i}" for i in range(5)]
    seed_everything(1)
    model_config = tiny_config(num_classes=3)
    model = build_model(model_config)
    report = transfer_weights(model, model_config, pretrained)

    heads = {n for n, _, _ in report.reinitialised}
    assert heads == {f"class_heads.{i}.{p}" for i in range(2) for p in ("weight", "bias")}
    assert not report.missing and not report.unused
    own, theirs = model.state_dict(), source.state_dict()
    for name in report.loaded:
        assert torch.equal(own[name], theirs[name]), name
    for head in model.class_heads:  # the official prior, and Linear's own weight range
        assert torch.allclose(head.bias, torch.full_like(head.bias, PRIOR))
        assert head.weight.abs().max() <= 1 / math.sqrt(head.in_features)
    assert 0.5 < report.loaded_fraction < 1.0
    assert report.counts()["reinitialised"] == 4
    assert "re-initialised (shape differs): 4" in "\n".join(report.lines())


def test_the_same_architecture_gives_the_same_outputs(tmp_path):
    source, path = _saved(tmp_path, tiny_config())
    model = build_model(tiny_config())
    report = transfer_weights(model, tiny_config(), read_pretrained(path))
    assert report.loaded_fraction == 1.0 and not report.reinitialised
    images = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        ours, theirs = model.eval()(images, mask), source.eval()(images, mask)
    assert torch.equal(ours["pred_logits"], theirs["pred_logits"])
    assert torch.equal(ours["pred_boxes"], theirs["pred_boxes"])


def test_an_official_checkpoint_fine_tunes_to_another_class_count(tmp_path, official_tiny_dir):
    official = official_state_dict(official_tiny_dir, "smca")
    torch.save({"model": official, "args": argparse.Namespace(
        **official_args(official_tiny_dir, "smca"))}, tmp_path / "official.pth")
    pretrained = read_pretrained(tmp_path / "official.pth", origin="s3://b/official.pth")
    assert pretrained.kind == "official" and pretrained.origin == "s3://b/official.pth"
    assert pretrained.config.model.smca and pretrained.config.model.num_classes == 91
    assert pretrained.lineage()["model"] == describe_model(pretrained.config.model)
    model_config = pretrained.config.replace(num_classes=7)
    model = build_model(model_config)
    report = transfer_weights(model, model_config, pretrained)
    converted = convert_state_dict(official)
    assert torch.equal(model.state_dict()["reference_boxes.weight"],
                       converted["reference_boxes.weight"])
    assert {n.split(".")[0] for n, _, _ in report.reinitialised} == {"class_heads"}
    assert report.loaded_fraction > 0.99


def test_an_smca_file_into_a_plain_model_remakes_only_the_point_heads(tmp_path):
    _, path = _saved(tmp_path, tiny_config(smca=True))
    model = build_model(tiny_config())
    report = transfer_weights(model, tiny_config(), read_pretrained(path))
    names = [n for n, _, _ in report.reinitialised]
    assert len(names) == 4 and all(".aligner.point_mlp." in n for n in names)  # 2 layers
    assert all(f[0] == 2 * m[0] for _, f, m in report.reinitialised)  # 4M values vs 2M


def test_a_file_that_fits_almost_nothing_is_refused_and_changes_nothing(tmp_path):
    _, path = _saved(tmp_path, tiny_config(backbone=BackboneConfig(name="resnet50"),
                                           hidden_dim=64, dim_feedforward=32))
    target = tiny_config()
    model = build_model(target)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        transfer_weights(model, target, read_pretrained(path))
    message = str(err.value)
    assert "resnet50 d64" in message and "resnet18 d32" in message
    assert "samdetr checkpoint" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # The same file passes when the caller says so little is meant to load.
    report = transfer_weights(model, target, read_pretrained(path), min_loaded=0.0)
    assert report.loaded_fraction < 0.5 and not any(n.startswith("backbone.")
                                                    for n in report.loaded)
    assert report.notes == ("backbone not loaded: the file's is a resnet50, the model's a "
                            "resnet18",)


def test_a_wrapped_model_loads_by_its_plain_names(tmp_path):
    source, path = _saved(tmp_path, tiny_config())

    class Wrapper(nn.Module):  # what DDP's and compile's names look like
        def __init__(self, module):
            super().__init__()
            self.module = module

    wrapped = Wrapper(build_model(tiny_config(num_classes=2)))
    report = transfer_weights(wrapped, tiny_config(num_classes=2), read_pretrained(path))
    assert "transformer.encoder.layers.0.linear1.weight" in report.loaded
    assert torch.equal(wrapped.module.reference_boxes.weight, source.reference_boxes.weight)
    assert torch.allclose(wrapped.module.class_heads[0].bias, torch.full((2,), PRIOR))


@pytest.mark.parametrize("content, match", [
    (b"not a checkpoint", "not a safely loadable"),
    (None, "no 'model' state dict"),
])
def test_unreadable_files_are_refused_clearly(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"weights": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_pretrained(path)
    with pytest.raises(FileNotFoundError, match="no pretrained checkpoint"):
        read_pretrained(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="min_loaded"):
        transfer_weights(build_model(tiny_config()), tiny_config(), None, min_loaded=2.0)
