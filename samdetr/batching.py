"""Padding images of mixed sizes into one batch with a padding mask, as DETR does."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pad_images(images: Sequence[Tensor], size_divisibility: int = 1) -> tuple[Tensor, Tensor]:
    """Zero-pad images bottom/right to a common size.

    Args:
        images: sequence of (C, H_i, W_i) tensors with the same C, dtype and device.
        size_divisibility: round the padded height and width up to a multiple of this.
    Returns:
        batch (B, C, H, W) and mask (B, H, W) bool, True on padded pixels. Boxes stay
        relative to each unpadded image.
    """
    if len(images) == 0:
        raise ValueError("pad_images needs at least one image")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"image {i} must be a (C, H, W) tensor, got {shape}")
    channels = {img.shape[0] for img in images}
    if len(channels) != 1:
        raise ValueError(f"images have different channel counts: {sorted(channels)}")
    if size_divisibility < 1:
        raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    height = -(-height // size_divisibility) * size_divisibility
    width = -(-width // size_divisibility) * size_divisibility
    first = images[0]
    batch = first.new_zeros(len(images), first.shape[0], height, width)
    mask = torch.ones(len(images), height, width, dtype=torch.bool, device=first.device)
    for img, slot, valid in zip(images, batch, mask, strict=True):
        slot[:, : img.shape[1], : img.shape[2]].copy_(img)
        valid[: img.shape[1], : img.shape[2]] = False
    return batch, mask


def valid_ratio(mask: Tensor) -> Tensor:
    """The unpadded fraction (w, h) of each image of a padding mask.

    Args:
        mask: (B, H, W) bool, True on padding (images padded at the right and bottom, as
            :func:`pad_images` does; a feature map's mask downsampled from it).
    Returns:
        (B, 2) float32.
    """
    valid = ~mask
    width = valid[:, 0, :].sum(1).float() / mask.shape[2]
    height = valid[:, :, 0].sum(1).float() / mask.shape[1]
    return torch.stack([width, height], dim=-1)
