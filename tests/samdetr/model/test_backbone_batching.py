"""Unit tests of the backbone and of padding images into a batch."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tiny import tiny_config
from torchvision.ops import FrozenBatchNorm2d

from samdetr.batching import pad_images
from samdetr.builder import build_model
from samdetr.config import BackboneConfig
from samdetr.model.backbone import build_resnet, load_backbone_weights

# ---------------------------------------------------------------------------- pad_images


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
    st.integers(1, 8),
)
def test_pad_images(sizes, divisibility):
    images = [torch.rand(3, h, w) + 0.5 for h, w in sizes]  # strictly positive pixels
    batch, mask = pad_images(images, size_divisibility=divisibility)
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    height = math.ceil(height / divisibility) * divisibility
    width = math.ceil(width / divisibility) * divisibility
    assert batch.shape == (len(images), 3, height, width)
    assert mask.shape == (len(images), height, width) and mask.dtype == torch.bool
    for img, slot, padding in zip(images, batch, mask, strict=True):
        h, w = img.shape[1:]
        assert torch.equal(slot[:, :h, :w], img)
        assert torch.equal(padding, (slot == 0).all(0))  # True exactly where nothing was copied
        assert not padding[:h, :w].any()
        assert int(padding.sum()) == height * width - h * w
        assert not slot[:, h:, :].any() and not slot[:, :, w:].any()


@pytest.mark.parametrize(
    ("images", "fragment"),
    [
        ([], "at least one image"),
        ([torch.zeros(1, 3, 4, 4)], "(C, H, W)"),
        ([torch.zeros(4, 4)], "(C, H, W)"),
        ([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)], "different channel counts"),
        (["not a tensor"], "(C, H, W)"),
    ],
)
def test_pad_images_errors(images, fragment):
    with pytest.raises(ValueError) as info:
        pad_images(images)
    assert fragment in str(info.value)


def test_pad_images_bad_divisibility():
    with pytest.raises(ValueError, match="size_divisibility"):
        pad_images([torch.zeros(3, 2, 2)], size_divisibility=0)


# ---------------------------------------------------------------------------- backbone


@pytest.mark.parametrize("train_backbone", [True, False])
def test_backbone_frozen_parts(train_backbone):
    backbone = build_resnet("resnet18", dilation=False, train_backbone=train_backbone)
    params = dict(backbone.body.named_parameters())
    assert params  # FrozenBatchNorm keeps only buffers, the convolutions are parameters
    for name, p in params.items():
        top = name.split(".")[0]
        if top in ("layer2", "layer3", "layer4"):
            assert p.requires_grad == train_backbone, name
        else:
            assert top in ("conv1", "layer1"), name
            assert not p.requires_grad, name
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert norms == []
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules()) > 10
    assert backbone.num_channels == 512


@pytest.mark.parametrize("norm", ["frozen_bn", "batch_norm", "group_norm"])
@pytest.mark.parametrize("layers", [0, 3, 4, 5])
def test_backbone_norm_and_trainable_stages(norm, layers):
    backbone = build_resnet("resnet18", False, True, norm=norm, trainable_layers=layers)
    stages = [("layer4",), ("layer3",), ("layer2",), ("layer1",), ("conv1", "bn1")][:layers]
    trainable = {name for stage in stages for name in stage}
    for name, p in backbone.body.named_parameters():
        assert p.requires_grad == (name.split(".")[0] in trainable), name
    kinds = {type(m) for m in backbone.modules()}
    if norm == "group_norm":
        assert torch.nn.GroupNorm in kinds and FrozenBatchNorm2d not in kinds
        assert all(m.num_groups == 32 for m in backbone.modules()
                   if isinstance(m, torch.nn.GroupNorm))
    for name, module in backbone.body.named_modules():
        top = name.split(".")[0]
        if norm == "batch_norm" and isinstance(module, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)):
            # A frozen stage keeps its statistics too: its BatchNorms are frozen ones.
            frozen = isinstance(module, FrozenBatchNorm2d)
            assert frozen == (top not in trainable), name
    features, _ = backbone(torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool))
    assert features.shape == (2, 512, 2, 2)


def test_trained_norms_learn_from_a_step():
    backbone = build_resnet("resnet18", False, True, norm="group_norm", trainable_layers=5)
    before = backbone.body.bn1.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    features, _ = backbone(torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool))
    features.square().mean().backward()
    optimizer.step()
    assert not torch.equal(before, backbone.body.bn1.weight)


def test_backbone_refuses_unknown_norm_and_stage_count():
    with pytest.raises(ValueError, match="unknown backbone norm"):
        build_resnet("resnet18", False, True, norm="layer_norm")
    with pytest.raises(ValueError, match="trainable_layers must be in 0..5"):
        build_resnet("resnet18", False, True, trainable_layers=6)


@pytest.mark.parametrize(("name", "last_stage", "channels", "stride"), [
    ("resnet18", 2, 128, 8), ("resnet18", 3, 256, 16), ("resnet50", 2, 512, 8),
    ("resnet50", 3, 1024, 16),
])
def test_last_stage_gives_a_finer_map_and_drops_later_stages(name, last_stage, channels, stride):
    backbone = build_resnet(name, False, True, "group_norm", 5, last_stage=last_stage)
    features, small = backbone(torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=bool))
    assert backbone.num_channels == channels
    assert features.shape == (1, channels, 64 // stride, 96 // stride)
    assert small.shape == (1, 64 // stride, 96 // stride)
    kept = {n.split(".")[0] for n, _ in backbone.body.named_parameters()}
    assert f"layer{last_stage}" in kept and "layer4" not in kept


def test_last_stage_is_checked():
    with pytest.raises(ValueError, match="last_stage must be 2, 3 or 4"):
        build_resnet("resnet18", False, True, last_stage=1)
    with pytest.raises(ValueError, match="needs last_stage=4"):
        build_resnet("resnet50", True, True, last_stage=3)


def test_several_levels_come_finest_first_with_their_masks():
    backbone = build_resnet("resnet18", False, True, num_levels=3)
    assert backbone.level_channels == (128, 256, 512) and backbone.num_channels == 512
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[:, :, 64:] = True
    images = torch.randn(1, 3, 64, 96)
    levels = backbone.forward_levels(images, mask)
    for (features, small), (channels, stride) in zip(levels, [(128, 8), (256, 16), (512, 32)],
                                                     strict=True):
        assert features.shape == (1, channels, 64 // stride, 96 // stride)
        assert small.shape == (1, 64 // stride, 96 // stride)
        assert small[0, 0].tolist() == [j * stride >= 64 for j in range(96 // stride)]
    last, last_mask = backbone(images, mask)
    assert torch.equal(last, levels[-1][0]) and torch.equal(last_mask, levels[-1][1])
    with pytest.raises(ValueError, match="at most 2"):
        build_resnet("resnet18", False, True, last_stage=3, num_levels=3)


def test_backbone_mask_is_downsampled():
    backbone = build_resnet("resnet18", dilation=False, train_backbone=True)
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[:, :, 48:] = True
    features, small = backbone(torch.randn(1, 3, 64, 96), mask)
    assert features.shape == (1, 512, 2, 3)
    assert small.shape == (1, 2, 3) and small.dtype == torch.bool
    # Nearest-neighbour (DETR's rule): cell j takes pixel 32 * j, i.e. pixels 0, 32 and 64.
    assert torch.equal(small[0], torch.tensor([[False, False, True]] * 2))


def test_dc5_halves_the_stride():
    images = torch.randn(1, 3, 96, 64)
    mask = torch.zeros(1, 96, 64, dtype=torch.bool)
    plain = build_resnet("resnet50", dilation=False, train_backbone=True)
    dc5 = build_resnet("resnet50", dilation=True, train_backbone=True)
    with torch.no_grad():
        feats, small = plain(images, mask)
        feats_dc5, small_dc5 = dc5(images, mask)
    assert feats.shape == (1, 2048, 3, 2) and small.shape == (1, 3, 2)
    assert feats_dc5.shape == (1, 2048, 6, 4) and small_dc5.shape == (1, 6, 4)


def test_unknown_resnet_name():
    with pytest.raises(ValueError, match="unknown ResNet"):
        build_resnet("vgg16", False, True)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_load_backbone_weights_from_file(tmp_path, wrapper):
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state if wrapper is None else {wrapper: state}, path)
    backbone = build_resnet("resnet18", False, True)
    load_backbone_weights(backbone, str(path))
    loaded = backbone.body.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_load_backbone_weights_missing_tensor(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer3.0.conv1.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"miss tensors.*layer3\.0\.conv1\.weight"):
        load_backbone_weights(build_resnet("resnet18", False, True), str(path))


def test_load_backbone_weights_extra_tensor(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"unexpected tensors.*layer5"):
        load_backbone_weights(build_resnet("resnet18", False, True), str(path))


def test_load_backbone_weights_ignores_classifier(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["fc.extra"] = torch.zeros(3)
    path = tmp_path / "with_fc.pth"
    torch.save(state, path)
    backbone = build_resnet("resnet18", False, True)
    load_backbone_weights(backbone, str(path))
    assert torch.equal(backbone.body.state_dict()["conv1.weight"], state["conv1.weight"])


def test_load_backbone_weights_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="neither an existing file nor a torchvision"):
        load_backbone_weights(build_resnet("resnet18", False, True), str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="neither an existing file"):
        load_backbone_weights(build_resnet("resnet18", False, True), "ResNet18_Weights.NOPE")


def test_building_never_touches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while building a model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    config = tiny_config(backbone=BackboneConfig(name="resnet18", weights="no/such/file.pth"))
    model = build_model(config, load_pretrained=False)
    assert model.backbone.num_channels == 512
    with pytest.raises(ValueError, match="backbone.weights is not set"):
        build_model(tiny_config(), load_pretrained=True)


def test_a_state_dict_read_once_loads_as_the_file_does(tmp_path):
    """build_model(backbone_state=...) gives the model that reading the file gives: what each
    Ray Train worker does with the weights its driver read."""
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    config = tiny_config(backbone=BackboneConfig(name="resnet18", weights=str(path)))
    torch.manual_seed(0)
    from_file = build_model(config, load_pretrained=True)
    torch.manual_seed(0)
    from_state = build_model(config, load_pretrained=True, backbone_state=state)
    for (name, a), (_, b) in zip(from_file.state_dict().items(),
                                 from_state.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(from_state.backbone.body.conv1.weight, state["conv1.weight"])
    with pytest.raises(ValueError, match="backbone_state is given but load_pretrained is false"):
        build_model(config, backbone_state=state)
    del state["layer1.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"r18.pth' miss tensors.*layer1\.0\.conv1"):
        build_model(config, load_pretrained=True, backbone_state=state)
