"""The official-checkpoint converter on small synthetic official-style state dicts."""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from support import tiny

from samdetr.builder import build_model
from samdetr.config import BackboneConfig, DetectorConfig
from samdetr.official import (
    convert_state_dict,
    infer_config,
    load_official,
    model_from_official_state,
    read_official_checkpoint,
)

# This project's decoder-layer module names -> the official ones (written out independently of
# the table in samdetr/official.py so that a wrong entry there makes the round trip fail).
OURS_TO_OFFICIAL_LAYER = {
    "self_attn.q_content": "sa_qcontent_proj",
    "self_attn.q_pos": "sa_qpos_proj",
    "self_attn.k_content": "sa_kcontent_proj",
    "self_attn.k_pos": "sa_kpos_proj",
    "self_attn.v": "sa_v_proj",
    "self_attn.out_proj": "self_attn.out_proj",
    "cross_attn.q_content": "ca_qcontent_proj",
    "cross_attn.k_content": "ca_kcontent_proj",
    "cross_attn.v": "ca_v_proj",
    "cross_attn.q_pos": "ca_qpos_sine_proj",
    "cross_attn.k_pos": "ca_kpos_sine_proj",
    "cross_attn.out_proj": "cross_attn.out_proj",
    "aligner.point_conv": "point1.0",
    "aligner.point_mlp": "point2",
    "aligner.content_gate": "attn1",
    "aligner.pos_gate": "attn2",
    "norm1": "norm1",
    "norm2": "norm2",
    "norm3": "norm3",
    "linear1": "linear1",
    "linear2": "linear2",
}
OURS_TO_OFFICIAL_PREFIX = [
    (r"^backbone\.body\.", "backbone.0.body."),
    (r"^input_proj\.0\.", "input_proj.0.0."),
    (r"^input_proj\.1\.", "input_proj.0.1."),
    (r"^reference_boxes\.weight$", "query_embed.weight"),
    (r"^class_heads\.(\d+)\.", r"class_embed.\1."),
    (r"^transformer\.decoder\.box_heads\.(\d+)\.", r"bbox_embed.\1."),
    (r"^transformer\.encoder\.", "transformer.encoder."),
]
LAYER = re.compile(r"^transformer\.decoder\.layers\.(\d+)\.(.+)$")


def to_official(ours: dict[str, torch.Tensor], aliases: bool = True) -> dict[str, torch.Tensor]:
    """Inverse of the converter: this project's state dict -> official names (with the
    ``transformer.decoder.bbox_embed.*`` aliases the official checkpoints carry)."""
    official = {}
    for name, tensor in ours.items():
        layer = LAYER.match(name)
        if layer:
            index, rest = layer.groups()
            for module in sorted(OURS_TO_OFFICIAL_LAYER, key=len, reverse=True):
                if rest.startswith(module + "."):
                    tail = rest[len(module) + 1 :]
                    new = f"transformer.decoder.layers.{index}.{OURS_TO_OFFICIAL_LAYER[module]}"
                    official[f"{new}.{tail}"] = tensor
                    break
            else:
                raise AssertionError(f"test inverse has no entry for {name}")
            continue
        for pattern, replacement in OURS_TO_OFFICIAL_PREFIX:
            if re.match(pattern, name):
                official[re.sub(pattern, replacement, name, count=1)] = tensor
                break
        else:
            raise AssertionError(f"test inverse has no entry for {name}")
    if aliases:
        for name in list(official):
            if name.startswith("bbox_embed."):
                official[f"transformer.decoder.{name}"] = official[name].clone()
    return official


def tiny_config(backbone: str = "resnet18", dilation: bool = False, **changes) -> DetectorConfig:
    # 3 decoder layers, 12 queries and 9 classes: distinct counts for infer_config to recover.
    fields = dict(num_decoder_layers=3, dropout=0.1, num_queries=12, num_classes=9)
    fields.update(changes)
    return tiny.tiny_config(backbone=BackboneConfig(name=backbone, dilation=dilation), **fields)


def official_args(config: DetectorConfig) -> dict:
    m = config.model
    return {
        "nheads": m.num_heads,
        "dropout": m.dropout,
        "dilation": m.backbone.dilation,
        "lr_backbone": 1e-5 if m.backbone.train_backbone else 0.0,
        "smca": m.smca,
        "epochs": 12,
    }


VARIANTS = {
    "sam": {},
    "smca": {"smca": True, "num_salient_points": 8},
    "groupnorm": {"input_proj_groupnorm": True, "num_salient_points": 2},
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    config = tiny_config(**VARIANTS[request.param])
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():  # no zero tensors: every converted tensor must be the right one
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return config, model


def test_round_trip_gives_identical_tensors(variant):
    _, model = variant
    ours = model.state_dict()
    official = to_official(ours)
    assert any(k.startswith("transformer.decoder.bbox_embed.") for k in official)
    converted = convert_state_dict(official)
    assert set(converted) == set(ours)
    for name, tensor in ours.items():
        assert converted[name] is tensor or torch.equal(converted[name], tensor), name


def test_aliases_are_optional(variant):
    _, model = variant
    ours = model.state_dict()
    assert set(convert_state_dict(to_official(ours, aliases=False))) == set(ours)


def test_differing_alias_is_refused(variant):
    _, model = variant
    official = to_official(model.state_dict())
    key = "transformer.decoder.bbox_embed.1.layers.2.bias"
    official[key] = official[key] + 1.0
    with pytest.raises(ValueError, match=re.escape(key)):
        convert_state_dict(official)


def test_alias_without_original_is_refused(variant):
    _, model = variant
    official = to_official(model.state_dict())
    del official["bbox_embed.0.layers.0.weight"]
    with pytest.raises(ValueError, match="should alias bbox_embed.0.layers.0.weight"):
        convert_state_dict(official)


@pytest.mark.parametrize(
    "extra",
    [
        "transformer.decoder.layers.0.point3.weight",
        "transformer.decoder.norm.weight",
        "backbone.1.body.conv1.weight",
        "something_else",
    ],
)
def test_unknown_key_is_named(variant, extra):
    _, model = variant
    official = to_official(model.state_dict())
    official[extra] = torch.zeros(2)
    with pytest.raises(ValueError) as info:
        convert_state_dict(official)
    assert extra in str(info.value)
    assert "unrecognised" in str(info.value)


@pytest.mark.parametrize("extra", ["input_proj.1.0.weight", "input_proj.2.1.bias"])
def test_stray_level_projections_are_refused(variant, extra):
    _, model = variant
    official = to_official(model.state_dict())
    official[extra] = torch.zeros(3)
    with pytest.raises(ValueError, match="unrecognised"):
        convert_state_dict(official)


def test_a_level_embedding_without_a_deformable_encoder_is_refused(variant):
    config, model = variant
    official = to_official(model.state_dict())
    official["transformer.level_embed"] = torch.zeros(3, config.model.hidden_dim)
    with pytest.raises(ValueError, match="not an official"):
        infer_config(official, official_args(config))


def test_infer_config_recognises_the_variant(variant):
    config, model = variant
    official = to_official(model.state_dict())
    inferred = infer_config(official, official_args(config))
    assert inferred == config
    m = inferred.model
    assert m.smca == config.model.smca
    assert m.input_proj_groupnorm == config.model.input_proj_groupnorm
    assert (m.num_classes, m.num_queries) == (9, 12)
    assert (m.num_encoder_layers, m.num_decoder_layers) == (2, 3)
    assert m.backbone.name == "resnet18"


def test_infer_config_without_args(variant):
    config, model = variant
    m = infer_config(to_official(model.state_dict())).model
    # Without args: heads tied to the salient points (official), dropout 0.1, no dilation.
    assert m.num_heads == config.model.num_salient_points
    assert (m.dropout, m.backbone.dilation, m.backbone.train_backbone) == (0.1, False, True)


def test_infer_config_smca_from_head_width():
    config = tiny_config(num_salient_points=2)
    official = to_official(build_model(config).state_dict())
    assert infer_config(official).model.smca is False
    for i in range(3):  # widen the point head's last layer from 2M to 4M
        official[f"transformer.decoder.layers.{i}.point2.6.weight"] = torch.zeros(8, 512)
        official[f"transformer.decoder.layers.{i}.point2.6.bias"] = torch.zeros(8)
    assert infer_config(official).model.smca is True
    for i in range(3):
        official[f"transformer.decoder.layers.{i}.point2.6.weight"] = torch.zeros(6, 512)
    with pytest.raises(ValueError, match="expected 2M or 4M"):
        infer_config(official)


def test_infer_config_dilation_and_overrides():
    config = tiny_config(backbone="resnet50", dilation=True, num_encoder_layers=1)
    official = to_official(build_model(config).state_dict())
    assert infer_config(official, {"dilation": True}).model.backbone.dilation is True
    assert infer_config(official, {}).model.backbone.dilation is False
    assert infer_config(official, {"dilation": False}, dilation=True).model.backbone.dilation
    inferred = infer_config(official, official_args(config))
    assert inferred == config
    assert inferred.model.backbone.name == "resnet50"
    frozen = infer_config(official, {"lr_backbone": 0.0})
    assert frozen.model.backbone.train_backbone is False
    assert infer_config(official, num_queries=5).model.num_queries == 5


def test_infer_config_missing_tensor():
    official = to_official(build_model(tiny_config()).state_dict())
    del official["query_embed.weight"]
    with pytest.raises(ValueError, match="query_embed.weight"):
        infer_config(official)


def test_model_from_official_state_matches(variant):
    config, model = variant
    official = to_official(model.state_dict())
    rebuilt, inferred = model_from_official_state(official, official_args(config))
    assert inferred == config
    images = torch.randn(1, 3, 64, 64)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        a, b = model(images), rebuilt(images)
    assert torch.equal(a["pred_logits"], b["pred_logits"])
    assert torch.equal(a["pred_boxes"], b["pred_boxes"])


def test_load_official_with_namespace_args(tmp_path, variant):
    config, model = variant
    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(**official_args(config))
    torch.save(
        {"model": to_official(model.state_dict()), "args": args, "epoch": 11, "optimizer": {}},
        path,
    )
    state, read_args = read_official_checkpoint(path)
    assert read_args == vars(args)
    loaded, inferred = load_official(path)
    assert inferred == config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


class NotAllowed:
    """An arbitrary class: unpickling it would run code of the file's choosing."""

    def __init__(self):
        self.lr = 1e-4


def test_load_official_refuses_arbitrary_objects(tmp_path):
    model = build_model(tiny_config())
    path = tmp_path / "evil.pth"
    torch.save({"model": to_official(model.state_dict()), "args": NotAllowed()}, path)
    with pytest.raises(ValueError, match="not a safely loadable checkpoint"):
        load_official(path)


def test_load_official_other_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_official(tmp_path / "missing.pth")
    path = tmp_path / "no_model.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="no 'model' state dict"):
        load_official(path)
