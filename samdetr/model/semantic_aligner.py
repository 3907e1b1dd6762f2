"""The Semantics Aligner: re-sample each query from the image features at M salient points."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, roi_align

from samdetr.model.position_encoding import sine_embed_points
from samdetr.model.roi_align import roi_align_boxes
from samdetr.model.sizes import sizes_tensor


class SemanticAligner(nn.Module):
    """Turns decoder queries into M (content, position) pairs in the image-feature space.

    Per query: RoIAlign of the encoder memory inside its reference box (roi_size x roi_size),
    a salient-point head predicts M offsets in [-1, 1] of the RoI (plus M raw (sx, sy) scales
    with SMCA), the RoI features are bilinearly sampled at those points, and both the sampled
    content and the points' sine embeddings are reweighted by sigmoid gates of the query.

    Args:
        d_model: D, feature width.
        num_points: M salient points (one cross-attention head each).
        predict_scales: also predict SMCA scales (the head's last layer emits 4M instead of 2M).
        roi_size: RoIAlign output size (7 in the paper).
        point_embed_grad: let gradients flow through the points' sine embeddings
            (the official code computes them without gradient).
        roi_align: "matmul" (:func:`samdetr.model.roi_align.roi_align_boxes`), "torchvision"
            or "auto" (matmul when training on CPU, else torchvision's kernel): the same values
            either way; the matmul form's backward is a matrix product instead of
            torchvision's single-threaded scatter on CPU.
    """

    def __init__(
        self,
        d_model: int,
        num_points: int,
        predict_scales: bool,
        roi_size: int = 7,
        point_embed_grad: bool = False,
        roi_align: str = "auto",
    ):
        super().__init__()
        if roi_align not in ("auto", "matmul", "torchvision"):
            raise ValueError(f"roi_align must be auto, matmul or torchvision, got {roi_align!r}")
        self.roi_align = roi_align
        self.d_model = d_model
        self.num_points = num_points
        self.predict_scales = predict_scales
        self.roi_size = roi_size
        self.point_embed_grad = point_embed_grad
        reduced = d_model // 4
        self.point_conv = nn.Conv2d(d_model, reduced, kernel_size=1)
        out = (4 if predict_scales else 2) * num_points
        # Indices 0, 2, 4, 6 hold the linear layers (ReLU between), as in the official layout.
        self.point_mlp = nn.Sequential(
            nn.Linear(reduced * roi_size * roi_size, 256),
            nn.ReLU(),
            nn.Linear(256, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, out),
        )
        nn.init.zeros_(self.point_mlp[-1].weight)
        nn.init.zeros_(self.point_mlp[-1].bias)
        self.content_gate = nn.Linear(d_model, num_points * d_model)
        self.pos_gate = nn.Linear(d_model, num_points * d_model)

    def _roi_align(self, memory_2d: Tensor, boxes: Tensor) -> Tensor:
        """(B*Q, D, r, r) RoIs of ``memory_2d`` (B, D, H, W) in ``boxes`` (B, Q, 4) xyxy cells."""
        # auto: the matmul form where it is faster, training on CPU (its forward alone is
        # slower than torchvision's on large maps; CUDA not measured yet).
        use_matmul = self.roi_align == "matmul" or (
            self.roi_align == "auto" and memory_2d.device.type == "cpu"
            and torch.is_grad_enabled() and memory_2d.requires_grad)
        if use_matmul:
            return roi_align_boxes(memory_2d, boxes, self.roi_size)
        b, q = boxes.shape[:2]
        batch_index = torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(q)
        rois = torch.cat([batch_index[:, None], boxes.reshape(b * q, 4)], dim=1)
        return roi_align(memory_2d, rois.to(memory_2d.dtype), output_size=self.roi_size,
                         spatial_scale=1.0, aligned=True)

    def forward(
        self, tgt: Tensor, memory_2d: Tensor, ref_boxes: Tensor, valid_ratio: Tensor
    ) -> dict[str, Tensor]:
        """
        Args:
            tgt: (B, Q, D) query content after self-attention.
            memory_2d: (B, D, H, W) encoder output.
            ref_boxes: (B, Q, 4) reference boxes, normalised (cx, cy, w, h) of the unpadded image.
            valid_ratio: (B, 2) unpadded fraction (w, h) of the feature map.
        Returns:
            dict with ``content`` (B, Q, M, D), ``pos`` (B, Q, M, D), ``points`` (B, Q, M, 2)
            normalised (x, y) image coordinates, and ``scales`` (B, Q, M, 2) or None.
        """
        b, q, d = tgt.shape
        m = self.num_points
        height, width = memory_2d.shape[-2:]
        # Reference boxes -> absolute xyxy in feature-map cells of the unpadded image.
        scale = sizes_tensor((width, height, width, height), memory_2d) * valid_ratio.repeat(1, 2)
        boxes = box_convert(ref_boxes, "cxcywh", "xyxy") * scale[:, None, :]
        # One RoIAlign serves both the point head and the sampling (the official code ran two
        # identical ones).
        roi = self._roi_align(memory_2d, boxes)  # (B*Q, D, r, r)

        raw = self.point_mlp(F.relu(self.point_conv(roi)).flatten(1))
        offsets = raw[:, : 2 * m].tanh().view(b * q, 1, m, 2)  # (x, y) in [-1, 1] of the RoI
        scales = raw[:, 2 * m :].view(b, q, m, 2) if self.predict_scales else None

        sampled = F.grid_sample(
            roi, offsets.to(roi.dtype), padding_mode="zeros", align_corners=False
        )
        content = sampled.view(b, q, d, m).transpose(2, 3)  # (B, Q, M, D)
        content = content * self.content_gate(tgt).view(b, q, m, d).sigmoid()

        # Point m sits at centre + 0.5 * wh * offset: offsets in [-1, 1] stay inside the box.
        offsets = offsets.view(b, q, m, 2)
        points = ref_boxes[:, :, None, :2] + 0.5 * ref_boxes[:, :, None, 2:] * offsets
        with torch.set_grad_enabled(self.point_embed_grad and torch.is_grad_enabled()):
            embed = sine_embed_points(points, d).to(tgt.dtype)
        pos = embed * self.pos_gate(tgt).view(b, q, m, d).sigmoid()
        return {"content": content, "pos": pos, "points": points, "scales": scales}
