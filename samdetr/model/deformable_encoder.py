"""The multiscale encoder: post-norm layers of multi-scale deformable self-attention + FFN over
the tokens of all feature levels (Deformable DETR's encoder, as the multiscale SAM-DETR uses it).

Tokens are the cells of every level, flattened level after level (each row-major): (B, S, D)
with S = sum of H_l * W_l. Padding masks are bool (B, S), True on padded cells; valid ratios
(B, L, 2) are the unpadded fraction (w, h) of each level's map.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samdetr.batching import valid_ratio
from samdetr.model.deformable_attention import MultiScaleDeformableAttention


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention (query = token + position, values = tokens) and an FFN, each
    with residual + LayerNorm (post-norm)."""

    def __init__(self, self_attn: MultiScaleDeformableAttention, d_model: int,
                 dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = self_attn
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: list[tuple[int, int]], padding_mask: Tensor) -> Tensor:
        """src, pos: (B, S, D); reference_points: (B, S, L, 2) -> (B, S, D)."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableEncoder(nn.Module):
    """``num_layers`` copies of ``layer`` in turn (no final norm), every token reading around
    its own cell centre on every level."""

    def __init__(self, layer: DeformableEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: list[tuple[int, int]],
                padding_mask: Tensor, valid_ratios: Tensor) -> Tensor:
        """src, pos: (B, S, D); padding_mask: (B, S); valid_ratios: (B, L, 2) -> (B, S, D)."""
        reference = reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference, spatial_shapes, padding_mask)
        return src


def reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
    """Each token's reference point on every level: its cell centre as a fraction of its own
    level's unpadded part, placed at the same fraction of each level's unpadded part.

    Args:
        spatial_shapes: (H_l, W_l) per level; valid_ratios: (B, L, 2) unpadded (w, h).
    Returns:
        (B, S, L, 2) normalised (x, y) of each level's whole (padded) map.
    """
    centres = []
    for level, (height, width) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
            torch.arange(width, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5,
            indexing="ij",
        )
        ratio = valid_ratios[:, level]  # (B, 2)
        x = xs.reshape(1, -1) / (ratio[:, None, 0] * width)
        y = ys.reshape(1, -1) / (ratio[:, None, 1] * height)
        centres.append(torch.stack([x, y], dim=-1))  # (B, H_l*W_l, 2)
    return torch.cat(centres, dim=1)[:, :, None] * valid_ratios[:, None]


def valid_ratios_of(masks: list[Tensor]) -> Tensor:
    """(B, L, 2) unpadded fraction (w, h) of each level's (B, H_l, W_l) padding mask (True on
    padding; images are padded at the right and bottom)."""
    return torch.stack([valid_ratio(mask) for mask in masks], dim=1)
