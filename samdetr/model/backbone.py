"""ResNet backbone (frozen BatchNorm by default), returning its last feature map and mask, or
the maps of its last few stages (the multiscale model)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

# Stages from the top down: ``trainable_layers=k`` trains the first k (the stem is conv1 + bn1).
_STAGES = (("layer4",), ("layer3",), ("layer2",), ("layer1",), ("conv1", "bn1"))
_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "frozen_bn": FrozenBatchNorm2d,
    "batch_norm": nn.BatchNorm2d,
    # 32 groups, as GroupNorm's paper and the official 12-epoch input projection use.
    "group_norm": partial(nn.GroupNorm, 32),
}


class Backbone(nn.Module):
    """Wraps a torchvision ResNet trunk.

    Args:
        body: module mapping images (B, 3, H, W) to ``{"0": features (B, C_0, h_0, w_0), ...}``,
            one entry per returned stage, finest first.
        level_channels: C_l of each returned stage, finest first.
    """

    def __init__(self, body: nn.Module, level_channels: tuple[int, ...]):
        super().__init__()
        self.body = body
        self.level_channels = tuple(level_channels)
        self.num_channels = self.level_channels[-1]

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            images: (B, 3, H, W) normalised pixels, zero-padded bottom/right.
            mask: (B, H, W) bool, True on padded pixels.
        Returns:
            features (B, C, h, w) of the last stage and mask (B, h, w), True on padded cells.
        """
        return self.forward_levels(images, mask)[-1]

    def forward_levels(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(features (B, C_l, h_l, w_l), mask (B, h_l, w_l)) of every returned stage, finest
        first."""
        levels = []
        for features in self.body(images).values():
            # Nearest-neighbour downsampling of the mask, as the official code does.
            small = F.interpolate(mask[None].float(), size=features.shape[-2:])[0]
            levels.append((features, small.to(torch.bool)))
        return levels


def build_resnet(
    name: str,
    dilation: bool,
    train_backbone: bool,
    norm: str = "frozen_bn",
    trainable_layers: int = 3,
    last_stage: int = 4,
    num_levels: int = 1,
) -> Backbone:
    """A randomly initialised ResNet trunk.

    ``norm``: ``frozen_bn`` (official), ``batch_norm`` or ``group_norm``. With
    ``train_backbone``, the top ``trainable_layers`` stages train (3: layer2-4, the official
    choice; 5: every stage and the stem); the rest is frozen. ``last_stage`` (2-4) is the stage
    whose output the detector sees: 4 (official) has stride 32 (16 with ``dilation``), 3 stride 16,
    2 stride 8; the stages after it are dropped. ``num_levels`` stages ending at ``last_stage``
    are returned (3: layer2-4, the multiscale model's C3-C5). No weights are loaded here (see
    :func:`load_backbone_weights`), so building never touches the disk or the network.
    """
    if not hasattr(torchvision.models, name) or not name.startswith("resnet"):
        raise ValueError(f"unknown ResNet {name!r}")
    if norm not in _NORMS:
        raise ValueError(f"unknown backbone norm {norm!r}; expected one of {sorted(_NORMS)}")
    if not 0 <= trainable_layers <= len(_STAGES):
        raise ValueError(f"trainable_layers must be in 0..{len(_STAGES)}, got {trainable_layers}")
    if last_stage not in (2, 3, 4):
        raise ValueError(f"last_stage must be 2, 3 or 4, got {last_stage}")
    if not 1 <= num_levels <= last_stage - 1:
        raise ValueError(f"num_levels={num_levels} needs stages from layer2 up to "
                         f"layer{last_stage}: at most {last_stage - 1}")
    if dilation and last_stage != 4:
        raise ValueError("dilation (DC5) dilates layer4, so it needs last_stage=4")
    # BasicBlock ResNets (18/34) cannot dilate; the config validates this earlier.
    replace = [False, False, dilation] if dilation else None
    resnet = getattr(torchvision.models, name)(
        weights=None, replace_stride_with_dilation=replace, norm_layer=_NORMS[norm]
    )
    stages = _STAGES[:trainable_layers] if train_backbone else ()
    trainable = {module for stage in stages for module in stage}
    for pname, parameter in resnet.named_parameters():
        parameter.requires_grad_(pname.split(".")[0] in trainable)
    if norm == "batch_norm":  # a frozen stage keeps its statistics too, not only its weights
        for name, child in list(resnet.named_children()):
            if name in trainable:
                continue
            if isinstance(child, nn.BatchNorm2d):  # the stem's bn1
                setattr(resnet, name, _frozen(child))
            else:
                _freeze_batch_norms(child)
    returned = range(last_stage - num_levels + 1, last_stage + 1)
    # Each stage doubles the channels, so stage k has fc.in_features / 2**(4 - k) of them.
    channels = tuple(resnet.fc.in_features // 2 ** (4 - k) for k in returned)
    # IntermediateLayerGetter keeps the children up to the last returned stage and drops the
    # rest; it returns the stages in order, finest first.
    body = IntermediateLayerGetter(
        resnet, return_layers={f"layer{k}": str(i) for i, k in enumerate(returned)})
    return Backbone(body, channels)


def _frozen(norm: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(norm.num_features, eps=norm.eps)
    frozen.load_state_dict(norm.state_dict(), strict=False)  # no num_batches_tracked
    return frozen


def _freeze_batch_norms(module: nn.Module) -> None:
    """Replace every ``BatchNorm2d`` under ``module`` with a ``FrozenBatchNorm2d``."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _frozen(child))
        else:
            _freeze_batch_norms(child)


def read_backbone_weights(weights: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict named by ``weights``: a local file (a state dict, possibly under
    ``"state_dict"`` or ``"model"``, read with ``weights_only=True``) or a torchvision weights
    name such as ``"ResNet50_Weights.IMAGENET1K_V1"`` (read from torchvision's cache,
    downloaded into it first if it is not there: OSError when that fails).

    Raises:
        ValueError: ``weights`` is neither an existing file nor a torchvision weights name.
        TypeError: the file holds no state dict.
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
    return state


def load_backbone_weights(backbone: Backbone, weights: str) -> None:
    """Load ImageNet weights (see :func:`read_backbone_weights`) into ``backbone.body``."""
    load_backbone_state(backbone, read_backbone_weights(weights), weights)


def load_backbone_state(backbone: Backbone, state: dict[str, torch.Tensor],
                        source: str = "the given state dict") -> None:
    """Load an ImageNet ResNet state dict, already read (e.g. once for many processes), into
    ``backbone.body``. The classifier head (``fc.*``) is ignored; every trunk tensor must be
    present. ``source`` names it in errors."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = backbone.body.load_state_dict(state, strict=False)
    # FrozenBatchNorm2d drops num_batches_tracked itself, so only real gaps remain.
    if result.missing_keys:
        raise ValueError(f"backbone weights {source!r} miss tensors: {result.missing_keys[:8]}")
    if result.unexpected_keys:
        raise ValueError(
            f"backbone weights {source!r} have unexpected tensors: {result.unexpected_keys[:8]}"
        )
