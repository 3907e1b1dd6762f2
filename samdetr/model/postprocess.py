"""Turn SAM-DETR outputs into per-image detections (scores, labels, absolute xyxy boxes).

Sigmoid over all Q x K logits, then the top-k (query, class) pairs per image; one query may
appear several times with different classes. No NMS.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from .matcher import validate_outputs

__all__ = ["PostProcess"]


class PostProcess(nn.Module):
    """Top-k detections per image in the original image's pixel coordinates.

    Args:
        num_top: number of (query, class) pairs kept per image (100 for COCO evaluation);
            clipped to Q * K when there are fewer pairs.
    """

    def __init__(self, num_top: int = 100) -> None:
        super().__init__()
        if isinstance(num_top, bool) or not isinstance(num_top, int) or num_top < 1:
            raise ValueError(f"num_top must be a positive int, got {num_top!r}")
        self.num_top = num_top

    def extra_repr(self) -> str:
        return f"num_top={self.num_top}"

    @torch.no_grad()
    def forward(
        self, outputs: Mapping[str, Tensor], target_sizes: Tensor
    ) -> list[dict[str, Tensor]]:
        """Select detections.

        Args:
            outputs: ``pred_logits`` (B, Q, K) raw logits and ``pred_boxes`` (B, Q, 4) normalised
                (cx, cy, w, h) relative to each unpadded image. Other keys are ignored.
            target_sizes: (B, 2) original image sizes as (height, width) in pixels.

        Returns:
            List of B dicts with ``scores`` (k,) descending, ``labels`` (k,) int64 class ids,
            ``boxes`` (k, 4) absolute (x1, y1, x2, y2) pixels and ``queries`` (k,) the query
            each detection comes from (e.g. to pick its salient points), k = min(num_top, Q * K).
        """
        batched = self.batched(outputs, target_sizes)
        return [
            {"scores": s, "labels": lab, "boxes": b, "queries": q}
            for s, lab, b, q in zip(batched["scores"], batched["labels"], batched["boxes"],
                                    batched["queries"], strict=True)
        ]

    def batched(self, outputs: Mapping[str, Tensor], target_sizes: Tensor) -> dict[str, Tensor]:
        """The detections of :meth:`forward` as batched tensors: ``scores`` (B, k), ``labels``
        (B, k) int64, ``boxes`` (B, k, 4) and ``queries`` (B, k) int64. No loop over the
        images, so it traces into an exported graph whose batch size stays free
        (:mod:`samdetr.export.exporter`); gradients flow unless the caller turns them off."""
        batch, num_queries, num_classes = validate_outputs(outputs)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        target_sizes = torch.as_tensor(target_sizes, device=logits.device)
        if target_sizes.shape != (batch, 2):
            raise ValueError(
                f"target_sizes must have shape (B, 2) = ({batch}, 2) holding (height, width), "
                f"got {tuple(target_sizes.shape)}"
            )

        k = min(self.num_top, num_queries * num_classes)
        prob = logits.sigmoid().flatten(1)  # (B, Q*K), index = query * K + class
        scores, flat_idx = torch.topk(prob, k, dim=1, sorted=True)
        query_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
        labels = flat_idx % num_classes

        xyxy = box_convert(boxes, "cxcywh", "xyxy")  # (B, Q, 4), still normalised
        xyxy = torch.gather(xyxy, 1, query_idx.unsqueeze(-1).expand(-1, -1, 4))
        height, width = target_sizes.to(xyxy.dtype).unbind(1)
        scale = torch.stack([width, height, width, height], dim=1)  # (B, 4)
        xyxy = xyxy * scale[:, None, :]
        return {"scores": scores, "labels": labels.to(torch.int64), "boxes": xyxy,
                "queries": query_idx}
