"""Sine position encodings: of the image feature grid, and of normalised points."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> Tensor:
    # Pairs of features share a frequency: one gets sin, the next cos.
    index = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


def _interleave_sin_cos(angles: Tensor) -> Tensor:
    """(..., F) angles -> (..., F) as sin(a0), cos(a1), sin(a2), cos(a3), ..."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """2-D sine encoding of the unpadded part of each feature map.

    Coordinates count valid cells, are centred (``cumsum - 0.5``) and normalised by
    ``last + 0.5`` so both image edges map inside (0, scale).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        scale: float = 2 * math.pi,
        eps: float = 1e-6,
    ):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale
        self.eps = eps

    def forward(self, mask: Tensor) -> Tensor:
        """mask (B, H, W) bool, True on padding -> encoding (B, 2 * num_pos_feats, H, W), (y, x)."""
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32) - 0.5
        x = not_mask.cumsum(2, dtype=torch.float32) - 0.5
        y = y / (y[:, -1:, :] + self.eps + 0.5) * self.scale
        x = x / (x[:, :, -1:] + self.eps + 0.5) * self.scale
        freqs = _frequencies(self.num_pos_feats, self.temperature, mask.device)
        pos_x = _interleave_sin_cos(x[..., None] / freqs)
        pos_y = _interleave_sin_cos(y[..., None] / freqs)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def sine_embed_points(
    points: Tensor, dim: int, temperature: float = 10000.0, scale: float = 2 * math.pi
) -> Tensor:
    """Sine embedding of normalised points.

    Args:
        points: (..., 2) as (x, y) in [0, 1] image coordinates.
        dim: output features; dim / 2 per coordinate.
    Returns:
        (..., dim) in the order (y features, x features), float32.
    """
    if points.shape[-1] != 2:
        raise ValueError(f"points must end with (x, y), got shape {tuple(points.shape)}")
    half = dim // 2
    freqs = _frequencies(half, temperature, points.device)
    points = points.float() * scale
    pos_x = _interleave_sin_cos(points[..., 0, None] / freqs)
    pos_y = _interleave_sin_cos(points[..., 1, None] / freqs)
    return torch.cat((pos_y, pos_x), dim=-1)
