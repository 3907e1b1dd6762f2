"""The encoder-decoder transformer over a single-scale feature map."""

from __future__ import annotations

from torch import Tensor, nn

from samdetr.model.decoder import LevelMemory, TransformerDecoder
from samdetr.model.encoder import TransformerEncoder


class Transformer(nn.Module):
    """Flattens the projected feature map, encodes it, and decodes the queries.

    Args:
        encoder, decoder: the two stacks (see their modules).
    """

    def __init__(self, encoder: TransformerEncoder, decoder: TransformerDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def reset_parameters(self) -> None:
        """Xavier-uniform on every matrix of the encoder and decoder layers, as the official code.

        The box heads keep their own initialisation (zero last layer).
        """
        for module in (self.encoder, self.decoder.layers):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def forward(
        self,
        src: Tensor,
        mask: Tensor,
        pos: Tensor,
        ref_table: Tensor,
    ) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        """
        Args:
            src: (B, D, H, W) projected features; mask: (B, H, W) bool, True on padding;
            pos: (B, D, H, W) position encoding; ref_table: (Q, 4) reference boxes (logits).
        Returns:
            see :meth:`TransformerDecoder.forward`.
        """
        height, width = src.shape[-2:]
        src = src.flatten(2).transpose(1, 2)  # (B, S, D)
        pos = pos.flatten(2).transpose(1, 2).to(src.dtype)
        key_padding_mask = mask.flatten(1)
        memory = self.encoder(src, pos, key_padding_mask)
        level = LevelMemory(memory, pos, key_padding_mask, (height, width))
        return self.decoder([level], ref_table)
