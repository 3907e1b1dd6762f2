"""The whole detector: backbone -> input projection -> transformer -> per-layer heads."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from samdetr.batching import pad_images
from samdetr.model.backbone import Backbone
from samdetr.model.position_encoding import PositionEmbeddingSine
from samdetr.model.transformer import Transformer


class SAMDETR(nn.Module):
    """SAM-DETR (or the baseline decoder, depending on the transformer passed in).

    Args:
        backbone: image trunk returning (B, C, h, w) features and their mask.
        position_encoding: sine encoding of the feature grid, D features.
        input_proj: (B, C, h, w) -> (B, D, h, w) projection (1x1 conv, optional GroupNorm).
        transformer: encoder + decoder; its decoder owns the per-layer box heads.
        class_heads: one Linear D -> K per decoder layer.
        num_queries: Q, rows of the learnable reference-box table.
        aux_loss: also return the predictions of the earlier decoder layers.
        attention_kernel: "math" runs the encoder's and decoder's attention on PyTorch's plain
            SDPA kernel only; "auto" lets PyTorch choose (its fused kernels included).
        multiscale: the backbone returns several levels, ``input_proj`` is a ModuleList with
            one projection per level, and ``transformer`` a
            :class:`samdetr.model.multiscale_transformer.MultiScaleTransformer`.
    """

    def __init__(
        self,
        backbone: Backbone,
        position_encoding: PositionEmbeddingSine,
        input_proj: nn.Module,
        transformer: Transformer,
        class_heads: nn.ModuleList,
        num_queries: int,
        aux_loss: bool = True,
        attention_kernel: str = "math",
        multiscale: bool = False,
    ):
        super().__init__()
        self.multiscale = multiscale
        if attention_kernel not in ("math", "auto"):
            raise ValueError(f"attention_kernel must be math or auto, got {attention_kernel!r}")
        self.attention_kernel = attention_kernel
        self.backbone = backbone
        self.position_encoding = position_encoding
        self.input_proj = input_proj
        self.transformer = transformer
        self.class_heads = class_heads
        # Reference boxes (cx, cy, w, h) before sigmoid; N(0, 1) as nn.Embedding initialises.
        self.reference_boxes = nn.Embedding(num_queries, 4)
        self.aux_loss = aux_loss

    def reset_head_parameters(self, prior_prob: float = 0.01) -> None:
        """Class bias at the focal-loss prior, zero last layer of every box head."""
        self.reset_class_heads(prior_prob, weights=False)
        for head in self.transformer.decoder.box_heads:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def reset_class_heads(self, prior_prob: float = 0.01, weights: bool = True) -> None:
        """Every class head's bias at the focal-loss prior ``-log((1 - p) / p)``, so that early
        training is not swamped by the loss of confident negatives; with ``weights``, the
        weights drawn anew as ``nn.Linear`` draws them (a head re-made for other classes)."""
        bias = -math.log((1 - prior_prob) / prior_prob)
        for head in self.class_heads:
            if weights:
                head.reset_parameters()
            nn.init.constant_(head.bias, bias)

    def _transformer(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, list]:
        """Backbone, input projection(s), position encoding(s) and the transformer."""
        if not self.multiscale:
            features, feature_mask = self.backbone(images, mask)
            pos = self.position_encoding(feature_mask).to(features.dtype)
            return self.transformer(self.input_proj(features), feature_mask, pos,
                                    self.reference_boxes.weight)
        levels = self.backbone.forward_levels(images, mask)
        srcs = [proj(features) for proj, (features, _) in zip(self.input_proj, levels,
                                                               strict=True)]
        masks = [level_mask for _, level_mask in levels]
        pos = [self.position_encoding(m).to(src.dtype) for m, src in zip(masks, srcs, strict=True)]
        return self.transformer(srcs, masks, pos, self.reference_boxes.weight)

    def forward(self, images: Tensor | list[Tensor], mask: Tensor | None = None) -> dict:
        """
        Args:
            images: (B, 3, H, W) normalised and zero-padded bottom/right, or a list of
                (3, H_i, W_i) tensors that are padded here.
            mask: (B, H, W) bool, True on padding; None means no padding.
        Returns:
            dict with ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) normalised
            (cx, cy, w, h) of each unpadded image, ``aux_outputs`` (list over the earlier
            layers of dicts with the same two keys, if ``aux_loss``), and for the SAM
            decoder ``salient_points`` (B, Q, M, 2) of the last layer, normalised (x, y).
        """
        if isinstance(images, (list, tuple)):
            if mask is not None:
                raise ValueError("pass either a list of images or a padded batch with its mask")
            images, mask = pad_images(images)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if mask is None:
            mask = torch.zeros(
                images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device
            )
        elif mask.shape != (images.shape[0], *images.shape[-2:]) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool (B, H, W) = {(images.shape[0], *images.shape[-2:])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        # "math": the plain SDPA kernel, on every device; the fused kernels recompute the softmax
        # in their backward, which goes wrong at large logits (docs/performance.md, "Attention
        # kernel").
        kernel = (sdpa_kernel([SDPBackend.MATH]) if self.attention_kernel == "math"
                  else contextlib.nullcontext())
        with kernel:
            hidden, boxes, points = self._transformer(images, mask)
        logits = torch.stack([head(h) for head, h in zip(self.class_heads, hidden, strict=True)])
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": lg, "pred_boxes": bx}
                for lg, bx in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        if points[-1] is not None:
            out["salient_points"] = points[-1]
        return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The detector inside a DDP wrapper (``.module``) and/or a ``torch.compile`` one
    (``._orig_mod``), or ``model`` itself: what a checkpoint saves and a copy averages."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
