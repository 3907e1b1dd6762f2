"""The ImageNet backbone weights a training run starts from: read once, on the driver.

The official recipes (``experiment=sam_detr_r50*``, ``model=sam_detr_r50*``) name torchvision's
ResNet weights, as the official code always starts from them. A fresh run reads them once on
the driver here, through torchvision's cache (downloading them into it if they are not there),
so a missing file or an unreachable download stops the run at start with what to do, instead
of failing inside every worker. The driver then puts them into Ray's object store
(:func:`share_object`) and every worker loads them from there: GPU nodes need no
network access and no copy of the file. Training from a random backbone is a choice made
explicitly: ``model.backbone.weights=null``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from samdetr.model.backbone import read_backbone_weights


def check_backbone_weights(
    weights: str | None,
    read: Callable[[str], dict[str, torch.Tensor]] = read_backbone_weights,
) -> dict[str, torch.Tensor] | None:
    """The state dict of ``weights`` read with ``read`` (None: a random backbone, as asked,
    and nothing is read); ValueError, saying what to do, when it cannot be read."""
    if weights is None:
        return None
    try:
        return read(weights)
    # no network, a missing file or an unknown name, a truncated download, not a state dict
    except (OSError, RuntimeError, ValueError, TypeError) as err:
        raise ValueError(
            f"model.backbone.weights={weights}: the ImageNet weights could not be read "
            f"({type(err).__name__}: {err}). Put the file into torchvision's cache "
            f"({Path(torch.hub.get_dir()) / 'checkpoints'}, set by TORCH_HOME), or pass "
            "model.backbone.weights=/path/to/weights.pth; to train from a random backbone "
            "instead, pass model.backbone.weights=null"
        ) from err


def absolute_weights(weights: str | None) -> str | None:
    """``weights`` made absolute if it names a local file (workers run in other folders);
    torchvision weights names and None unchanged."""
    if weights is not None and Path(weights).expanduser().is_file():
        return os.path.abspath(Path(weights).expanduser())
    return weights


def share_object(value: Any) -> Any:
    """An object-store reference to ``value`` (read once on the driver: weights the workers
    load); None for None. Needs Ray to be up."""
    if value is None:
        return None
    import ray

    return ray.put(value)
