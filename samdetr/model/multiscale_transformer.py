"""The encoder-decoder transformer over several feature levels (the multiscale SAM-DETR)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from samdetr.model.decoder import LevelMemory, TransformerDecoder
from samdetr.model.deformable_attention import MultiScaleDeformableAttention
from samdetr.model.deformable_encoder import DeformableEncoder, valid_ratios_of


class MultiScaleTransformer(nn.Module):
    """Encodes the tokens of all levels together with deformable attention, then decodes the
    queries with each decoder layer reading one level.

    Args:
        encoder: the deformable encoder.
        decoder: the SAM decoder with its box heads.
        d_model: D; num_levels: L feature levels, finest first.
        layer_levels: the level each decoder layer reads (0 = the finest).
    """

    def __init__(self, encoder: DeformableEncoder, decoder: TransformerDecoder, d_model: int,
                 num_levels: int, layer_levels: Sequence[int]):
        super().__init__()
        if len(layer_levels) != len(decoder.layers) or not all(
                0 <= level < num_levels for level in layer_levels):
            raise ValueError(f"layer_levels {tuple(layer_levels)} must give a level in "
                             f"0..{num_levels - 1} for each of {len(decoder.layers)} layers")
        self.encoder = encoder
        self.decoder = decoder
        self.layer_levels = tuple(layer_levels)
        # Added to each level's sine position: the encoder's and the decoder keys' position.
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))

    def reset_parameters(self) -> None:
        """As the official code: Xavier-uniform on every matrix of the encoder and decoder
        layers, then the deformable attention's own initialisation; the level embedding
        N(0, 1). The box heads keep their own initialisation."""
        for module in (self.encoder, self.decoder.layers):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for module in self.encoder.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self,
        srcs: Sequence[Tensor],
        masks: Sequence[Tensor],
        pos: Sequence[Tensor],
        ref_table: Tensor,
    ) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        """
        Args:
            srcs: per level (B, D, H_l, W_l) projected features, finest first; masks: per level
            (B, H_l, W_l) bool, True on padding; pos: per level (B, D, H_l, W_l) sine position;
            ref_table: (Q, 4) reference boxes (logits).
        Returns:
            see :meth:`samdetr.model.decoder.TransformerDecoder.forward`.
        """
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        tokens = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)
        positions = torch.cat([
            p.flatten(2).transpose(1, 2).to(tokens.dtype) + self.level_embed[i].to(tokens.dtype)
            for i, p in enumerate(pos)
        ], dim=1)
        padding = torch.cat([mask.flatten(1) for mask in masks], dim=1)
        memory = self.encoder(tokens, positions, shapes, padding, valid_ratios_of(masks))
        sizes = [h * w for h, w in shapes]
        levels = [
            LevelMemory(m, p, k, shape)
            for m, p, k, shape in zip(memory.split(sizes, dim=1), positions.split(sizes, dim=1),
                                      padding.split(sizes, dim=1), shapes, strict=True)
        ]
        return self.decoder(levels, ref_table, self.layer_levels)
