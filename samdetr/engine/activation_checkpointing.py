"""Activation checkpointing: parts of the model drop their intermediate activations in the forward
pass and recompute them in the backward pass, trading compute (about one more forward pass of
those parts) for memory.

The parts are the backbone's ResNet stages, the encoder layers and the decoder layers (each a
checkpointed unit), in any model of :func:`samdetr.builder.build_model`, multiscale included.
The weights, their names and the outputs do not change; gradients are the same (dropout draws
the same masks again: the RNG state is replayed, as are autocast and the attention kernel the
forward pass used). Without gradients (evaluation) the parts run as they are.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

#: What can be checkpointed.
PARTS = ("backbone", "encoder", "decoder")


def check_parts(parts: Sequence[str], name: str = "parts") -> tuple[str, ...]:
    """``parts`` as a tuple, or a ValueError naming ``name`` when one is not in :data:`PARTS`
    or a part is named twice."""
    if isinstance(parts, str) or not isinstance(parts, Sequence):
        raise ValueError(f"{name} must be a list of {list(PARTS)}, got {parts!r}")
    unknown = [p for p in parts if p not in PARTS]
    if unknown or len(set(parts)) != len(parts):
        raise ValueError(f"{name} must be a list of distinct parts from {list(PARTS)}, "
                         f"got {list(parts)!r}")
    return tuple(parts)


def _units(model: nn.Module, part: str) -> list[nn.Module]:
    if part == "backbone":
        body = model.backbone.body
        return [m for name, m in body.named_children() if name.startswith("layer")]
    return list(getattr(model.transformer, part).layers)


def _enabled_attention_kernels() -> list[SDPBackend]:
    """The scaled-dot-product-attention kernels allowed now (``sdpa_kernel`` sets these flags;
    they hold on every device)."""
    cuda = torch.backends.cuda
    flags = {SDPBackend.MATH: cuda.math_sdp_enabled(),
             SDPBackend.FLASH_ATTENTION: cuda.flash_sdp_enabled(),
             SDPBackend.EFFICIENT_ATTENTION: cuda.mem_efficient_sdp_enabled(),
             SDPBackend.CUDNN_ATTENTION: cuda.cudnn_sdp_enabled()}
    return [kernel for kernel, enabled in flags.items() if enabled]


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # Bound to the module itself (not a closure over its forward), so that a copy of the model
    # (copy.deepcopy, e.g. the moving average's) runs its own weights.
    forward = type(self).forward
    if not torch.is_grad_enabled():
        return forward(self, *args, **kwargs)
    # The recomputation runs in the backward pass, outside the forward's contexts: the model's
    # choice of attention kernel (model.attention_kernel) is replayed, or the recomputed
    # attention would be another kernel's, with other saved tensors (autocast is replayed by
    # torch itself).
    kernels = _enabled_attention_kernels()
    return checkpoint(forward, self, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), sdpa_kernel(kernels)),
                      **kwargs)


def checkpoint_activations(model: nn.Module, parts: Sequence[str]) -> int:
    """Checkpoint the units of ``parts`` (see :data:`PARTS`) of ``model`` (a SAM-DETR, before
    any DDP wrapping) in place; returns how many units were."""
    units = [unit for part in check_parts(parts) for unit in _units(model, part)]
    for unit in units:
        unit.forward = types.MethodType(_checkpointed_forward, unit)
    return len(units)
