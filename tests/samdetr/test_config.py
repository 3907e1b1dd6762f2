"""Validation, serialisation and presets of the detector configuration."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samdetr.builder import build_model, count_trainable_parameters
from samdetr.config import (
    BACKBONES,
    PRESETS,
    BackboneConfig,
    DetectorConfig,
    LossConfig,
    ModelConfig,
    preset,
)

# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"hidden_dim": 32, "num_heads": 4, "num_salient_points": 3}, "num_salient_points=3"),
        ({"hidden_dim": 32, "num_heads": 4, "num_salient_points": 64}, "must divide hidden_dim"),
        ({"hidden_dim": 30, "num_heads": 3, "num_salient_points": 2}, "multiple of 4"),
        ({"hidden_dim": 36, "num_heads": 4, "num_salient_points": 4}, None),  # valid: 36 % 4 == 0
        ({"hidden_dim": 32, "num_heads": 3, "num_salient_points": 4}, "num_heads=3"),
        ({"hidden_dim": 48, "num_heads": 4, "input_proj_groupnorm": True}, "GroupNorm(32, D)"),
        ({"decoder": "baseline", "smca": True}, "smca needs decoder='sam'"),
        ({"decoder": "deformable"}, "model.decoder must be one of"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"dropout": -0.1}, "model.dropout"),
        ({"dropout": "0.1"}, "model.dropout"),
        ({"num_queries": 0}, "model.num_queries must be a positive integer"),
        ({"num_queries": -3}, "model.num_queries must be a positive integer"),
        ({"num_classes": 0}, "model.num_classes must be a positive integer"),
        ({"num_encoder_layers": True}, "model.num_encoder_layers must be a positive integer"),
        ({"hidden_dim": True}, "model.hidden_dim must be a positive integer"),
        ({"num_queries": 10.0}, "model.num_queries must be a positive integer"),
        ({"smca_beta": 0.0}, "model.smca_beta"),
        ({"roi_size": 0}, "model.roi_size"),
    ],
)
def test_model_config_validation(changes, fragment):
    if fragment is None:
        cfg = ModelConfig(**changes)
        assert cfg.hidden_dim == changes["hidden_dim"]
        return
    with pytest.raises(ValueError) as info:
        ModelConfig(**changes)
    assert fragment in str(info.value)


def test_groupnorm_accepts_multiples_of_32():
    assert ModelConfig(hidden_dim=64, num_heads=8, input_proj_groupnorm=True).hidden_dim == 64


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "resnet152"}, "backbone.name must be one of"),
        ({"name": "vgg16"}, "'vgg16'"),
        ({"name": "resnet18", "dilation": True}, "needs a bottleneck ResNet"),
        ({"name": "resnet34", "dilation": True}, "not resnet34"),
        ({"weights": ""}, "backbone.weights"),
        ({"weights": 3}, "backbone.weights"),
        ({"norm": "layer_norm"}, "backbone.norm must be one of"),
        ({"norm": "group_norm", "weights": "w.pth"}, "no statistics to load them into"),
        ({"trainable_layers": 6}, "backbone.trainable_layers must be an integer in 0..5"),
        ({"trainable_layers": True}, "backbone.trainable_layers"),
        ({"trainable_layers": 2.0}, "backbone.trainable_layers"),
        ({"last_stage": 1}, "backbone.last_stage must be 2, 3 or 4"),
        ({"last_stage": True}, "backbone.last_stage must be 2, 3 or 4"),
        ({"name": "resnet50", "dilation": True, "last_stage": 3}, "needs backbone.last_stage=4"),
    ],
)
def test_backbone_config_validation(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        BackboneConfig(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_dilation_allowed_for_bottleneck_resnets(name):
    assert BackboneConfig(name=name, dilation=True).num_channels == 2048


def test_official_presets_keep_the_frozen_backbone():
    for name in PRESETS:
        backbone = preset(name).model.backbone
        assert (backbone.norm, backbone.trainable_layers, backbone.last_stage) == (
            "frozen_bn", 3, 4), name


def test_backbone_channels():
    assert BackboneConfig(name="resnet18").num_channels == 512
    assert BackboneConfig(name="resnet34").num_channels == 512
    assert BackboneConfig(name="resnet50").num_channels == 2048
    assert BackboneConfig(name="resnet18", last_stage=2).num_channels == 128
    assert BackboneConfig(name="resnet50", last_stage=3).num_channels == 1024


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"loss_bbox": -1.0}, "loss.loss_bbox must be a finite number >= 0"),
        ({"cost_giou": -0.5}, "loss.cost_giou"),
        ({"loss_class": float("inf")}, "loss.loss_class"),
        ({"loss_giou": float("nan")}, "loss.loss_giou"),
        ({"focal_gamma": True}, "loss.focal_gamma"),
        ({"focal_alpha": 1.5}, "focal_alpha must be in [0, 1]"),
        ({"cost_class": 0.0, "cost_bbox": 0.0, "cost_giou": 0.0}, "matching cost"),
    ],
)
def test_loss_config_validation(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        LossConfig(**kwargs)
    assert fragment in str(info.value)


def test_zero_loss_weight_is_allowed():
    assert LossConfig(loss_giou=0.0, cost_giou=0.0).loss_giou == 0.0


def test_nested_errors_come_through_from_dict():
    with pytest.raises(ValueError, match="num_salient_points=5"):
        DetectorConfig.from_dict({"model": {"num_salient_points": 5}})
    with pytest.raises(ValueError, match="needs a bottleneck ResNet"):
        DetectorConfig.from_dict({"model": {"backbone": {"name": "resnet18", "dilation": True}}})
    with pytest.raises(ValueError, match="loss.loss_bbox"):
        DetectorConfig.from_dict({"loss": {"loss_bbox": -2}})


@pytest.mark.parametrize(
    ("data", "where", "names"),
    [
        ({"modle": {}}, "config", ["modle"]),
        ({"model": {"hiden_dim": 32, "queries": 3}}, "config.model", ["hiden_dim", "queries"]),
        ({"model": {"backbone": {"depth": 50}}}, "config.model.backbone", ["depth"]),
        ({"loss": {"loss_mask": 1.0}}, "config.loss", ["loss_mask"]),
    ],
)
def test_unknown_keys_are_named(data, where, names):
    with pytest.raises(ValueError) as info:
        DetectorConfig.from_dict(data)
    message = str(info.value)
    assert message.startswith(where + ":")
    for name in names:
        assert repr(name) in message


def test_from_dict_rejects_non_mappings():
    with pytest.raises(TypeError, match="expected a mapping"):
        DetectorConfig.from_dict({"model": [1, 2]})


def test_replace_validates_again():
    cfg = DetectorConfig()
    small = cfg.replace(hidden_dim=64, num_queries=5)
    assert (small.model.hidden_dim, small.model.num_queries) == (64, 5)
    assert small.loss == cfg.loss
    with pytest.raises(ValueError, match="num_queries"):
        cfg.replace(num_queries=0)


def test_configs_are_frozen():
    cfg = DetectorConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.hidden_dim = 128  # type: ignore[misc]


# ---------------------------------------------------------------------------- round trip


@st.composite
def valid_configs(draw) -> DetectorConfig:
    hidden_dim = draw(st.sampled_from([32, 64, 96, 128]))
    divisors = [k for k in (1, 2, 4, 8, 16, 32) if hidden_dim % k == 0]
    name = draw(st.sampled_from(BACKBONES))
    bottleneck = name in ("resnet50", "resnet101")
    dilation = draw(st.booleans()) if bottleneck else False
    decoder = draw(st.sampled_from(["sam", "baseline"]))
    norm = draw(st.sampled_from(["frozen_bn", "batch_norm", "group_norm"]))
    weights = st.one_of(st.none(), st.sampled_from(["w.pth", "/x/y.pt"]))
    backbone = BackboneConfig(
        name=name,
        dilation=dilation,
        train_backbone=draw(st.booleans()),
        weights=None if norm == "group_norm" else draw(weights),
        norm=norm,
        trainable_layers=draw(st.integers(0, 5)),
        last_stage=4 if bottleneck and dilation else draw(st.sampled_from([2, 3, 4])),
    )
    weight = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
    model = ModelConfig(
        backbone=backbone,
        hidden_dim=hidden_dim,
        num_heads=draw(st.sampled_from(divisors)),
        num_salient_points=draw(st.sampled_from(divisors)),
        num_encoder_layers=draw(st.integers(1, 6)),
        num_decoder_layers=draw(st.integers(1, 6)),
        dim_feedforward=draw(st.integers(1, 4096)),
        dropout=draw(st.floats(min_value=0.0, max_value=0.99)),
        num_queries=draw(st.integers(1, 900)),
        num_classes=draw(st.integers(1, 1000)),
        decoder=decoder,
        smca=draw(st.booleans()) if decoder == "sam" else False,
        smca_beta=draw(st.floats(min_value=0.1, max_value=100.0)),
        input_proj_groupnorm=draw(st.booleans()) if hidden_dim % 32 == 0 else False,
        roi_size=draw(st.integers(1, 9)),
        point_embed_grad=draw(st.booleans()),
        aux_loss=draw(st.booleans()),
    )
    loss = LossConfig(
        cost_class=draw(weight),
        cost_bbox=draw(st.floats(min_value=0.1, max_value=10.0)),
        cost_giou=draw(weight),
        loss_class=draw(weight),
        loss_bbox=draw(weight),
        loss_giou=draw(weight),
        focal_alpha=draw(st.floats(min_value=0.0, max_value=1.0)),
        focal_gamma=draw(weight),
    )
    return DetectorConfig(model=model, loss=loss)


@settings(max_examples=40, deadline=None)
@given(valid_configs())
def test_to_dict_from_dict_round_trip(cfg):
    data = cfg.to_dict()
    assert DetectorConfig.from_dict(data) == cfg
    # The dict is plain data: it survives JSON unchanged and still rebuilds the same config.
    via_json = json.loads(json.dumps(data))
    assert via_json == data
    assert DetectorConfig.from_dict(via_json) == cfg
    assert data["model"]["backbone"]["name"] == cfg.model.backbone.name


@settings(max_examples=15, deadline=None)
@given(valid_configs(), st.sampled_from(["num_queries", "dim_feedforward", "num_classes"]))
def test_partial_dicts_keep_defaults(cfg, key):
    value = getattr(cfg.model, key)
    rebuilt = DetectorConfig.from_dict({"model": {key: value}})
    assert getattr(rebuilt.model, key) == value
    defaults = dataclasses.asdict(ModelConfig())
    others = {k: v for k, v in dataclasses.asdict(rebuilt.model).items() if k != key}
    assert others == {k: v for k, v in defaults.items() if k != key}


def test_from_dict_of_empty_dict_is_default():
    assert DetectorConfig.from_dict({}) == DetectorConfig()
    assert DetectorConfig.from_dict({"model": {}, "loss": {}}) == DetectorConfig()


# ---------------------------------------------------------------------------- presets


def test_there_are_twelve_presets():
    assert len(PRESETS) == 12
    assert set(PRESETS) == {
        f"sam_detr_r50{scale}{smca}_e{ep}"
        for scale in ("", "_dc5", "_ms")
        for smca in ("", "_smca")
        for ep in (12, 50)
    }


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_a_matching_config(name):
    cfg = preset(name)
    m = cfg.model
    assert isinstance(cfg, DetectorConfig)
    assert m.backbone.name == "resnet50"
    assert m.backbone.dilation == ("_dc5" in name)
    assert m.smca == ("_smca" in name)
    assert m.multiscale == ("_ms" in name)
    # single-scale: GroupNorm for < 25 epochs; multiscale: always, built in
    assert m.input_proj_groupnorm == (name.endswith("_e12") and not m.multiscale)
    assert (m.hidden_dim, m.num_queries, m.num_classes, m.num_salient_points) == (256, 300, 91, 8)
    assert (m.num_encoder_layers, m.num_decoder_layers, m.dim_feedforward) == (6, 6, 2048)
    assert m.decoder == "sam"
    assert cfg.loss == LossConfig()
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("stem", ["sam_detr_r50", "sam_detr_r50_dc5_smca"])
def test_12_and_50_epoch_presets_differ_only_in_groupnorm(stem):
    short, long = preset(f"{stem}_e12").to_dict(), preset(f"{stem}_e50").to_dict()
    assert short["model"].pop("input_proj_groupnorm") is True
    assert long["model"].pop("input_proj_groupnorm") is False
    assert short == long


def test_multiscale_presets_have_the_official_parameter_counts():
    from samdetr.builder import build_model, count_trainable_parameters

    for name, count in (("sam_detr_r50_ms_e12", 54_972_298), ("sam_detr_r50_ms_e50", 54_972_298),
                        ("sam_detr_r50_ms_smca_e12", 55_021_546)):
        assert count_trainable_parameters(build_model(preset(name))) == count, name
    m = preset("sam_detr_r50_ms_e12").model
    assert (m.num_feature_levels, m.encoder_points, m.encoder_ffn) == (3, 4, 1024)
    assert m.layer_levels == (2, 2, 1, 1, 0, 0)


@pytest.mark.parametrize("changes, fragment", [
    ({"num_feature_levels": 4}, "num_feature_levels=4"),
    ({"backbone": {"dilation": True}}, "dilation"),
    ({"decoder_levels": [0, 1]}, "decoder_levels"),
    ({"decoder_levels": [0, 0, 1, 1, 3, 3]}, "decoder_levels"),
    ({"hidden_dim": 48, "num_heads": 4, "num_salient_points": 4}, "GroupNorm"),
    ({"decoder": "baseline"}, "decoder='sam'"),
])
def test_multiscale_settings_are_checked(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        DetectorConfig.from_dict({"model": {"multiscale": True, **changes}})


def test_decoder_levels_are_explicit_when_given():
    m = ModelConfig(multiscale=True, num_decoder_layers=3, decoder_levels=[2, 0, 1])
    assert m.layer_levels == (2, 0, 1) and m.decoder_levels == (2, 0, 1)


@pytest.mark.parametrize("name", ["sam_detr_r101_e50", "sam_detr_r50_e36", "", "SAM_DETR_R50_E50"])
def test_unknown_preset(name):
    with pytest.raises(ValueError) as info:
        preset(name)
    assert "unknown preset" in str(info.value)
    assert "sam_detr_r50_e50" in str(info.value)  # lists what is available


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sam_detr_r50_e50", 58_073_546),
        ("sam_detr_r50_e12", 58_074_058),
        ("sam_detr_r50_smca_e50", 58_122_794),
    ],
)
def test_official_trainable_parameter_counts(name, expected):
    assert count_trainable_parameters(build_model(preset(name))) == expected


def test_dc5_does_not_change_parameter_count():
    base = count_trainable_parameters(build_model(ModelConfig(num_encoder_layers=1)))
    dc5 = ModelConfig(num_encoder_layers=1, backbone=BackboneConfig(dilation=True))
    assert count_trainable_parameters(build_model(dc5)) == base


@pytest.mark.parametrize(
    "build",
    [
        lambda: ModelConfig(smca="no"),
        lambda: ModelConfig(aux_loss=1),
        lambda: BackboneConfig(dilation="no"),
        lambda: ModelConfig(smca_beta=True),
        lambda: ModelConfig(dropout=False),
    ],
)
def test_switches_and_numbers_reject_wrong_types(build):
    with pytest.raises(ValueError):
        build()
