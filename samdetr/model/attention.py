"""Decoder attention: conditional self-attention, the two cross-attentions, and the SMCA bias.

All tensors are batch-first: queries (B, Q, D), image memory (B, S, D) with S = H * W in
row-major order. Key padding masks are bool (B, S), True on padded cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samdetr.model.mlp import MLP
from samdetr.model.sizes import sizes_tensor


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    bias: Tensor | None,
    dropout: float,
    scale: float,
) -> Tensor:
    """Scaled dot-product attention over prepared heads.

    Args:
        q: (B, H, Q, E) queries; k: (B, H or 1, S, E) keys (1 = shared by all heads);
        v: (B, H, S, Ev) values; key_padding_mask: (B, S) bool, True = ignore;
        bias: (B, H, Q, S) added to the logits after masking, or None.
        dropout: probability on the attention weights (pass 0.0 in eval).
    Returns:
        (B, H, Q, Ev).
    """
    mask = None
    if key_padding_mask is not None:
        mask = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
    if bias is not None:
        mask = bias.to(q.dtype) if mask is None else mask + bias.to(q.dtype)
    k = k.expand(-1, q.shape[1], -1, -1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, L, H * E) -> (B, H, L, E)."""
    b, length, _ = x.shape
    return x.view(b, length, num_heads, -1).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(B, H, L, E) -> (B, L, H * E)."""
    b, _, length, _ = x.shape
    return x.transpose(1, 2).reshape(b, length, -1)


class ConditionalSelfAttention(nn.Module):
    """Self-attention over queries with separate content and position projections.

    q = Wqc x + Wqp p, k = Wkc x + Wkp p, v = Wv x, then ``num_heads`` heads without further
    input projections, and an output projection.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_content = nn.Linear(d_model, d_model)
        self.q_pos = nn.Linear(d_model, d_model)
        self.k_content = nn.Linear(d_model, d_model)
        self.k_pos = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x, pos: (B, Q, D) -> (B, Q, D)."""
        h = self.num_heads
        q = _heads(self.q_content(x) + self.q_pos(pos), h)
        k = _heads(self.k_content(x) + self.k_pos(pos), h)
        v = _heads(self.v(x), h)
        scale = 1.0 / math.sqrt(q.shape[-1])
        dropout = self.dropout if self.training else 0.0
        return self.out_proj(_merge(attend(q, k, v, None, None, dropout, scale)))


class _CrossAttention(nn.Module):
    """Projections shared by both decoder cross-attentions.

    Keys are ``Wkc memory + MLP(image_pos)``, values ``Wv memory``; the query position goes
    through its own two-layer MLP.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_content = nn.Linear(d_model, d_model)
        self.k_content = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.q_pos = MLP(d_model, d_model, d_model, 2)
        self.k_pos = MLP(d_model, d_model, d_model, 2)
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.zeros_(self.out_proj.bias)

    def keys_values(self, memory: Tensor, memory_pos: Tensor) -> tuple[Tensor, Tensor]:
        """memory, memory_pos: (B, S, D) -> keys (B, S, D), values (B, H, S, D / H)."""
        keys = self.k_content(memory) + self.k_pos(memory_pos)
        return keys, _heads(self.v(memory), self.num_heads)


class SalientPointCrossAttention(_CrossAttention):
    """SAM-DETR cross-attention: one head per salient point.

    Head m's query is ``Wqc content_m + MLP(pos_m)`` (D wide); every head uses the same
    D-wide key; values are split into M heads of D / M. Logits are scaled by 1 / sqrt(D).
    """

    def forward(
        self,
        content: Tensor,
        point_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        key_padding_mask: Tensor | None,
        bias: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            content, point_pos: (B, Q, M, D) sampled content and weighted point embeddings.
            memory, memory_pos: (B, S, D).
            bias: (B, M, Q, S) additive logit bias (SMCA) or None.
        Returns:
            (B, Q, D).
        """
        q = (self.q_content(content) + self.q_pos(point_pos)).transpose(1, 2)  # (B, M, Q, D)
        keys, values = self.keys_values(memory, memory_pos)
        scale = 1.0 / math.sqrt(q.shape[-1])
        dropout = self.dropout if self.training else 0.0
        out = attend(q, keys[:, None], values, key_padding_mask, bias, dropout, scale)
        return self.out_proj(_merge(out))


class ConditionalCrossAttention(_CrossAttention):
    """Baseline cross-attention: ordinary multi-head attention of width D.

    The query is ``Wqc tgt + MLP(sine(reference centre))``; no semantics aligner.
    """

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        key_padding_mask: Tensor | None,
    ) -> Tensor:
        """tgt, query_pos: (B, Q, D); memory, memory_pos: (B, S, D) -> (B, Q, D)."""
        h = self.num_heads
        q = _heads(self.q_content(tgt) + self.q_pos(query_pos), h)
        keys, values = self.keys_values(memory, memory_pos)
        k = _heads(keys, h)
        scale = 1.0 / math.sqrt(q.shape[-1])
        dropout = self.dropout if self.training else 0.0
        return self.out_proj(_merge(attend(q, k, values, key_padding_mask, None, dropout, scale)))


def smca_gaussian_bias(
    points: Tensor, scales: Tensor, spatial_shape: tuple[int, int], valid_ratio: Tensor, beta: float
) -> Tensor:
    """SMCA logit bias around each head's salient point.

    ``-(sx^2 dx^2 + sy^2 dy^2) / beta`` with (dx, dy) the distance in feature pixels from the
    point to each cell centre (x + 0.5, y + 0.5).

    Args:
        points: (B, Q, M, 2) normalised (x, y) w.r.t. the unpadded image.
        scales: (B, Q, M, 2) raw predicted (sx, sy).
        spatial_shape: (H, W) of the feature map.
        valid_ratio: (B, 2) unpadded fraction (w, h) of the feature map.
    Returns:
        (B, M, Q, H * W).
    """
    height, width = spatial_shape
    size = sizes_tensor((width, height), points)
    pixel = points * size * valid_ratio[:, None, None, :].to(points.dtype)
    xs = torch.arange(width, dtype=points.dtype, device=points.device) + 0.5
    ys = torch.arange(height, dtype=points.dtype, device=points.device) + 0.5
    sq = scales * scales
    # The grid is separable: the x and y terms are computed per column / row and broadcast.
    x_term = (pixel[..., 0, None] - xs).pow(2) * sq[..., 0, None]  # (B, Q, M, W)
    y_term = (pixel[..., 1, None] - ys).pow(2) * sq[..., 1, None]  # (B, Q, M, H)
    dist = x_term[..., None, :] + y_term[..., :, None]  # (B, Q, M, H, W)
    return (-dist / beta).flatten(3).permute(0, 2, 1, 3)
