"""Decoder layers (SAM and baseline) and the decoder with iterative box refinement."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samdetr.batching import valid_ratio
from samdetr.model.attention import (
    ConditionalCrossAttention,
    ConditionalSelfAttention,
    SalientPointCrossAttention,
    smca_gaussian_bias,
)
from samdetr.model.position_encoding import sine_embed_points
from samdetr.model.semantic_aligner import SemanticAligner


class _DecoderLayer(nn.Module):
    """Self-attention and FFN blocks shared by both decoder layers (post-norm)."""

    def __init__(
        self,
        self_attn: ConditionalSelfAttention,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        point_embed_grad: bool,
    ):
        super().__init__()
        self.point_embed_grad = point_embed_grad
        self.self_attn = self_attn
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout_ffn = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def centre_embedding(self, ref_boxes: Tensor, dim: int) -> Tensor:
        """(B, Q, 4) cxcywh -> (B, Q, D) sine embedding of the box centres."""
        with torch.set_grad_enabled(self.point_embed_grad and torch.is_grad_enabled()):
            return sine_embed_points(ref_boxes[..., :2], dim).to(ref_boxes.dtype)

    def self_attention_block(self, tgt: Tensor, centre_pos: Tensor) -> Tensor:
        return self.norm1(tgt + self.dropout1(self.self_attn(tgt, centre_pos)))

    def ffn_block(self, tgt: Tensor) -> Tensor:
        ffn = self.linear2(self.dropout_ffn(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class SAMDecoderLayer(_DecoderLayer):
    """Decoder layer with the Semantics Aligner in front of a salient-point cross-attention.

    Args:
        self_attn, aligner, cross_attn: the three parts (see their docstrings).
        smca_beta: if given, add the SMCA Gaussian bias (the aligner must predict scales).
    """

    def __init__(
        self,
        self_attn: ConditionalSelfAttention,
        aligner: SemanticAligner,
        cross_attn: SalientPointCrossAttention,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        smca_beta: float | None = None,
        point_embed_grad: bool = False,
    ):
        super().__init__(self_attn, d_model, dim_feedforward, dropout, point_embed_grad)
        if (smca_beta is not None) != aligner.predict_scales:
            raise ValueError("SMCA needs an aligner that predicts scales, and only then")
        self.aligner = aligner
        self.cross_attn = cross_attn
        self.smca_beta = smca_beta

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_2d: Tensor,
        memory_pos: Tensor,
        key_padding_mask: Tensor,
        ref_boxes: Tensor,
        valid_ratio: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            tgt: (B, Q, D) query content; memory, memory_pos: (B, S, D); memory_2d: (B, D, H, W)
            the same memory as a map; key_padding_mask: (B, S); ref_boxes: (B, Q, 4)
            normalised cxcywh; valid_ratio: (B, 2) unpadded fraction (w, h).
        Returns:
            tgt (B, Q, D) and the salient points (B, Q, M, 2), normalised (x, y).
        """
        d = tgt.shape[-1]
        tgt = self.self_attention_block(tgt, self.centre_embedding(ref_boxes, d))
        aligned = self.aligner(tgt, memory_2d, ref_boxes, valid_ratio)
        bias = None
        if self.smca_beta is not None:
            bias = smca_gaussian_bias(
                aligned["points"],
                aligned["scales"],
                tuple(memory_2d.shape[-2:]),
                valid_ratio,
                self.smca_beta,
            )
        attended = self.cross_attn(
            aligned["content"], aligned["pos"], memory, memory_pos, key_padding_mask, bias
        )
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.ffn_block(tgt), aligned["points"]


class BaselineDecoderLayer(_DecoderLayer):
    """The same decoder layer without the Semantics Aligner (conditional cross-attention)."""

    def __init__(
        self,
        self_attn: ConditionalSelfAttention,
        cross_attn: ConditionalCrossAttention,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        point_embed_grad: bool = False,
    ):
        super().__init__(self_attn, d_model, dim_feedforward, dropout, point_embed_grad)
        self.cross_attn = cross_attn

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_2d: Tensor,
        memory_pos: Tensor,
        key_padding_mask: Tensor,
        ref_boxes: Tensor,
        valid_ratio: Tensor,
    ) -> tuple[Tensor, None]:
        """Arguments as :meth:`SAMDecoderLayer.forward`; returns tgt (B, Q, D) and None."""
        centre_pos = self.centre_embedding(ref_boxes, tgt.shape[-1])
        tgt = self.self_attention_block(tgt, centre_pos)
        attended = self.cross_attn(tgt, centre_pos, memory, memory_pos, key_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.ffn_block(tgt), None


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of x in [0, 1], clamped by eps on both sides."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class TransformerDecoder(nn.Module):
    """Stacks ``num_layers`` copies of ``layer`` with per-layer box heads.

    Layer 0 uses the sigmoid of the learnable reference table (gradient flows into it);
    layer l >= 1 uses the box predicted by layer l - 1, detached. Box of layer l:
    ``sigmoid(inverse_sigmoid(ref_l) + box_heads[l](h_l))``.
    """

    def __init__(self, layer: nn.Module, num_layers: int, box_heads: nn.ModuleList):
        super().__init__()
        if len(box_heads) != num_layers:
            raise ValueError(
                f"need one box head per decoder layer: {len(box_heads)} != {num_layers}"
            )
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.box_heads = box_heads

    def forward(
        self,
        levels: Sequence[LevelMemory],
        ref_table: Tensor,
        layer_levels: Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        """
        Args:
            levels: the encoder's output per feature level (one for the single-scale model).
            ref_table: (Q, 4) reference boxes before sigmoid.
            layer_levels: the index into ``levels`` each layer reads (None: all the first);
                its RoIAlign, valid ratio, keys, padding mask and SMCA grid are that level's.
        Returns:
            hidden states (L, B, Q, D), boxes (L, B, Q, 4) normalised cxcywh, and per layer
            the salient points (B, Q, M, 2) or None for the baseline.
        """
        layer_levels = list(layer_levels) if layer_levels is not None else [0] * len(self.layers)
        if len(layer_levels) != len(self.layers) or not all(
                0 <= i < len(levels) for i in layer_levels):
            raise ValueError(f"layer_levels {layer_levels} must name one of the {len(levels)} "
                             f"levels for each of the {len(self.layers)} layers")
        maps = [_as_map(level) for level in levels]
        b, _, d = levels[0].memory.shape
        tgt = levels[0].memory.new_zeros(b, ref_table.shape[0], d)
        ref = ref_table.sigmoid()[None].expand(b, -1, -1)
        hidden, boxes, points = [], [], []
        for layer, box_head, index in zip(self.layers, self.box_heads, layer_levels, strict=True):
            level, (memory_2d, valid_ratio) = levels[index], maps[index]
            tgt, layer_points = layer(
                tgt, level.memory, memory_2d, level.pos, level.mask, ref, valid_ratio
            )
            box = (inverse_sigmoid(ref) + box_head(tgt)).sigmoid()
            hidden.append(tgt)
            boxes.append(box)
            points.append(layer_points)
            ref = box.detach()
        return torch.stack(hidden), torch.stack(boxes), points


@dataclass(frozen=True)
class LevelMemory:
    """One feature level as the decoder reads it: ``memory`` and ``pos`` (B, S, D) (the
    position the cross-attention keys add), ``mask`` (B, S) bool, True on padding, and
    ``shape`` (H, W) with S = H * W, row-major."""

    memory: Tensor
    pos: Tensor
    mask: Tensor
    shape: tuple[int, int]


def _as_map(level: LevelMemory) -> tuple[Tensor, Tensor]:
    """The level's memory as a (B, D, H, W) map and its valid ratio (B, 2): the unpadded
    fraction (w, h)."""
    b, _, d = level.memory.shape
    height, width = level.shape
    memory_2d = level.memory.transpose(1, 2).reshape(b, d, height, width)
    return memory_2d, valid_ratio(level.mask.view(b, height, width))
