"""Multi-scale deformable attention (Deformable DETR), in plain PyTorch: no compiled operator.

The multiscale SAM-DETR encoder attends with it: every query reads ``num_points`` bilinear
samples per head and feature level around its reference point and mixes them with softmax
weights predicted from the query. Sampling is ``torch.nn.functional.grid_sample`` (bilinear,
zero padding, ``align_corners=False``), so it runs on any device and autograd gives the
backward.

Shapes: B batch, Q queries, S = sum over levels of H_l * W_l value tokens (levels flattened
one after the other, each row-major), L levels, M heads of E = D / M features, P points.
Locations are normalised (x, y) in [0, 1] of each level's whole (padded) map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samdetr.model.sizes import sizes_tensor


def sample_levels(
    value: Tensor, spatial_shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """The deformable-attention read: one ``grid_sample`` per level, then the weighted sum.

    Args:
        value: (B, S, M, E) value tokens of all levels.
        spatial_shapes: (H_l, W_l) of each level, in the order of ``value``.
        locations: (B, Q, M, L, P, 2) normalised (x, y) sampling locations.
        weights: (B, Q, M, L, P) attention weights (softmax over L * P per head).
    Returns:
        (B, Q, M * E), heads concatenated in order.
    """
    b, _, m, e = value.shape
    q, num_levels, p = locations.shape[1], locations.shape[3], locations.shape[4]
    _check_levels(value, spatial_shapes, num_levels)
    grids = 2.0 * locations - 1.0  # grid_sample's [-1, 1], corners at the map's outer edges
    sampled = []
    for level, (chunk, (height, width)) in enumerate(
            zip(value.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes,
                strict=True)):
        # (B, H_l*W_l, M, E) -> (B*M, E, H_l, W_l): one image per (batch, head)
        maps = chunk.permute(0, 2, 3, 1).reshape(b * m, e, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(b * m, q, p, 2)
        sampled.append(F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (B*M, E, Q, P)
    return _mix(torch.stack(sampled, dim=-2), weights)


def sample_levels_stacked(
    value: Tensor, spatial_shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor
) -> Tensor:
    """The same read as :func:`sample_levels` with one ``grid_sample`` for all levels: each
    level's map is zero-padded to the largest height and width and the levels are stacked
    into the batch; locations are rescaled to the padded map. Zero padding of the map and
    grid_sample's zero padding outside it give the same samples, so the results are equal."""
    b, _, m, e = value.shape
    q, num_levels, p = locations.shape[1], locations.shape[3], locations.shape[4]
    _check_levels(value, spatial_shapes, num_levels)
    top = max(h for h, _ in spatial_shapes)
    right = max(w for _, w in spatial_shapes)
    maps = value.new_zeros(b, m, num_levels, e, top, right)
    for level, (chunk, (height, width)) in enumerate(
            zip(value.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes,
                strict=True)):
        maps[:, :, level, :, :height, :width] = chunk.permute(0, 2, 3, 1).reshape(
            b, m, e, height, width)
    fraction = torch.tensor([[w / right, h / top] for h, w in spatial_shapes],
                            dtype=locations.dtype, device=locations.device)  # (L, 2)
    grid = 2.0 * locations * fraction[:, None, :] - 1.0  # (B, Q, M, L, P, 2)
    grid = grid.permute(0, 2, 3, 1, 4, 5).reshape(b * m * num_levels, q, p, 2)
    sampled = F.grid_sample(maps.reshape(b * m * num_levels, e, top, right), grid,
                            mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(b * m, num_levels, e, q, p).permute(0, 2, 3, 1, 4)
    return _mix(sampled, weights)


def _check_levels(value: Tensor, spatial_shapes: list[tuple[int, int]], levels: int) -> None:
    tokens = sum(h * w for h, w in spatial_shapes)
    if value.shape[1] != tokens or len(spatial_shapes) != levels:
        raise ValueError(
            f"value has {value.shape[1]} tokens and locations {levels} levels, but "
            f"spatial_shapes {spatial_shapes} give {tokens} tokens in {len(spatial_shapes)}"
        )


def _mix(sampled: Tensor, weights: Tensor) -> Tensor:
    """(B*M, E, Q, L, P) samples, (B, Q, M, L, P) weights -> (B, Q, M * E)."""
    bm, e, q, levels, p = sampled.shape
    b, m = weights.shape[0], weights.shape[2]
    flat = weights.transpose(1, 2).reshape(bm, 1, q, levels * p)
    out = (sampled.reshape(bm, e, q, levels * p) * flat).sum(-1)  # (B*M, E, Q)
    return out.view(b, m * e, q).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over ``num_levels`` feature maps (the multiscale encoder's
    self-attention), with the official initialisation.

    Args:
        d_model: D; num_levels: L; num_heads: M (must divide D); num_points: P per head and
        level.
        stacked: sample all levels with one ``grid_sample`` (:func:`sample_levels_stacked`)
            instead of one per level (:func:`sample_levels`); equal results.
    """

    def __init__(self, d_model: int = 256, num_levels: int = 3, num_heads: int = 8,
                 num_points: int = 4, stacked: bool = False):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
        self.num_levels, self.num_heads, self.num_points = num_levels, num_heads, num_points
        self.stacked = stacked
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a star: head h points along the angle 2*pi*h/M (its larger
        component scaled to 1), point k at k + 1 times that, on every level; attention weights
        start uniform; value and output projections Xavier with zero biases."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float64) * (2 * math.pi / self.num_heads)
        direction = torch.stack([angles.cos(), angles.sin()], dim=-1)
        direction = direction / direction.abs().max(dim=-1, keepdim=True).values
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float64)
        star = direction[:, None, None, :] * steps[None, None, :, None]  # (M, 1, P, 2)
        star = star.expand(-1, self.num_levels, -1, -1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(star.reshape(-1).float())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int]],
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            query: (B, Q, D) queries (with their position added, for the encoder).
            reference_points: (B, Q, L, 2) normalised (x, y) per level.
            value: (B, S, D) tokens of all levels, flattened level after level.
            spatial_shapes: (H_l, W_l) per level.
            padding_mask: (B, S) bool, True on padding: those tokens' values are zeroed.
        Returns:
            (B, Q, D).
        """
        b, q, _ = query.shape
        m, levels, p = self.num_heads, self.num_levels, self.num_points
        values = self.value_proj(value)
        if padding_mask is not None:
            values = values.masked_fill(padding_mask[..., None], 0.0)
        values = values.view(b, value.shape[1], m, -1)
        offsets = self.sampling_offsets(query).view(b, q, m, levels, p, 2)
        weights = self.attention_weights(query).view(b, q, m, levels * p).softmax(-1)
        # offsets are in cells of each level: divide by its (W, H)
        size = sizes_tensor([n for h, w in spatial_shapes for n in (w, h)], query).view(-1, 2)
        locations = reference_points[:, :, None, :, None, :] \
            + offsets / size[None, None, None, :, None, :]
        sample = sample_levels_stacked if self.stacked else sample_levels
        out = sample(values, spatial_shapes, locations, weights.view(b, q, m, levels, p))
        return self.output_proj(out)
