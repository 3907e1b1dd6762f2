"""ResNet backbone with frozen BatchNorm, returning the last feature map and its padding mask."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

_TRAINABLE_LAYERS = ("layer2", "layer3", "layer4")


class Backbone(nn.Module):
    """Wraps a torchvision ResNet trunk.

    Args:
        body: module mapping images (B, 3, H, W) to ``{"0": features (B, C, h, w)}``.
        num_channels: C, the channel count of the returned feature map.
    """

    def __init__(self, body: nn.Module, num_channels: int):
        super().__init__()
        self.body = body
        self.num_channels = num_channels

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            images: (B, 3, H, W) normalised pixels, zero-padded bottom/right.
            mask: (B, H, W) bool, True on padded pixels.
        Returns:
            features (B, C, h, w) and mask (B, h, w), True on padded feature cells.
        """
        features = self.body(images)["0"]
        # Nearest-neighbour downsampling of the mask, as the official code does.
        small = F.interpolate(mask[None].float(), size=features.shape[-2:])[0].to(torch.bool)
        return features, small


def build_resnet(name: str, dilation: bool, train_backbone: bool) -> Backbone:
    """A randomly initialised ResNet trunk with frozen BatchNorm; stem and layer1 frozen.

    No weights are loaded here (see :func:`load_backbone_weights`), so building never
    touches the disk or the network.
    """
    if not hasattr(torchvision.models, name) or not name.startswith("resnet"):
        raise ValueError(f"unknown ResNet {name!r}")
    # BasicBlock ResNets (18/34) cannot dilate; the config validates this earlier.
    replace = [False, False, dilation] if dilation else None
    resnet = getattr(torchvision.models, name)(
        weights=None, replace_stride_with_dilation=replace, norm_layer=FrozenBatchNorm2d
    )
    for pname, parameter in resnet.named_parameters():
        trainable = train_backbone and pname.split(".")[0] in _TRAINABLE_LAYERS
        parameter.requires_grad_(trainable)
    num_channels = resnet.fc.in_features
    body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"})
    return Backbone(body, num_channels)


def load_backbone_weights(backbone: Backbone, weights: str) -> None:
    """Load ImageNet weights into ``backbone.body``.

    ``weights`` is either a local file (a state dict, possibly under ``"state_dict"`` or
    ``"model"``, read with ``weights_only=True``) or a torchvision weights name such as
    ``"ResNet50_Weights.IMAGENET1K_V1"`` (torchvision downloads or reuses its cache).
    The classifier head (``fc.*``) is ignored; every trunk tensor must be present.
    """
    path = Path(weights).expanduser()
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    else:
        try:
            enum = torchvision.models.get_weight(weights)
        except (ValueError, KeyError, AttributeError) as err:
            raise ValueError(
                f"backbone weights {weights!r} are neither an existing file nor a torchvision "
                "weights name like 'ResNet50_Weights.IMAGENET1K_V1'"
            ) from err
        state = enum.get_state_dict(progress=False)
    if not isinstance(state, dict):
        raise TypeError(f"backbone weights {weights!r} do not hold a state dict")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = backbone.body.load_state_dict(state, strict=False)
    # FrozenBatchNorm2d drops num_batches_tracked itself, so only real gaps remain.
    if result.missing_keys:
        raise ValueError(f"backbone weights {weights!r} miss tensors: {result.missing_keys[:8]}")
    if result.unexpected_keys:
        raise ValueError(
            f"backbone weights {weights!r} have unexpected tensors: {result.unexpected_keys[:8]}"
        )
