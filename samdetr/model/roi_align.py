"""RoIAlign as one matrix product: torchvision's ``roi_align(aligned=True, sampling_ratio=-1)``
with a backward that is a matrix product too.

Each output bin of torchvision's RoIAlign averages ``gh x gw`` bilinear samples, with
``gh = ceil(roi_h / out_h)`` (likewise ``gw``) chosen per RoI. A bilinear weight is a product of
a row weight and a column weight, a sample outside ``[-1, H] x [-1, W]`` counts as zero (again a
product of a row test and a column test), and the average's divisor ``gh * gw`` splits the same
way. So bin ``(i, j)`` of a RoI is ``sum_hw Ay[i, h] Ax[j, w] F[:, h, w]``, where ``Ay``
(out_h x H) holds each output row's averaged row weights and ``Ax`` (out_w x W) the column
weights: all bins of all RoIs of an image are one product of their weight matrix
(Q*out_h*out_w x H*W) with the feature map (H*W x C). The values are torchvision's up to the
order of the sums; the backward is the transposed product (multi-threaded), where torchvision's
CPU backward scatters sample by sample on one thread. The weight matrix is rebuilt in the
backward from the two small factors instead of being kept.

As torchvision's, it gives no gradient to the boxes. On CPU its forward costs about what
torchvision's does on small maps and more on large ones; forward + backward is 2-7x faster
(``bench/model_step.py``, docs/performance.md).
"""

from __future__ import annotations

import torch
from torch import Tensor


def axis_weights(start: Tensor, end: Tensor, out: int, size: int) -> Tensor:
    """Averaged bilinear weights along one axis.

    Args:
        start, end: (...,) RoI edges in feature cells (x1, x2 or y1, y2 as given to RoIAlign
            with ``aligned=True``: the half-cell shift is applied here).
        out: bins along the axis. size: feature cells along the axis.
    Returns:
        (..., out, size): weight of cell ``k`` in bin ``i``, divided by the RoI's sample count
        along the axis (zero rows for a RoI of no extent, as torchvision gives zeros).
    """
    roi_start = start - 0.5
    extent = end - 0.5 - roi_start
    bin_size = extent / out
    # Samples per bin along this axis; a non-finite box (a diverged model) samples nothing.
    count = torch.nan_to_num(torch.ceil(extent / out), nan=0.0, posinf=0.0).clamp(min=0)
    most = max(int(count.max().item()) if count.numel() else 0, 1)
    step = torch.arange(most, device=start.device, dtype=start.dtype)
    bins = torch.arange(out, device=start.device, dtype=start.dtype)
    # Sample coordinates (..., out, most): bin start + (s + 0.5) * bin_size / count.
    per_sample = (bin_size / count.clamp(min=1))[..., None, None]
    coord = (roi_start[..., None, None] + bins[:, None] * bin_size[..., None, None]
             + (step + 0.5) * per_sample)
    used = step < count[..., None, None]  # each RoI's own sample count
    inside = (coord >= -1.0) & (coord <= size)  # torchvision: zero beyond one cell outside
    coord = coord.clamp(min=0)
    low = coord.floor().clamp(max=size - 1)
    coord = torch.where(low >= size - 1, low, coord)  # the last cell takes the whole weight
    frac = coord - low
    cells = torch.arange(size, device=start.device, dtype=start.dtype)
    weight = ((cells == low[..., None]) * (1 - frac[..., None])
              + (cells == (low + 1)[..., None]) * frac[..., None])  # (..., out, most, size)
    weight = torch.where((used & inside)[..., None], weight, 0.0)  # also drops NaN positions
    return weight.sum(-2) / count.clamp(min=1)[..., None, None]


def _bin_weights(wy: Tensor, wx: Tensor) -> Tensor:
    """(B, Q*r*r, H*W) weights of every bin of every RoI: ``wy`` (B, Q, r, H) x ``wx``
    (B, Q, r, W) as an outer product per bin."""
    b, q, r, h = wy.shape
    w = wx.shape[-1]
    return (wy[:, :, :, None, :, None] * wx[:, :, None, :, None, :]).reshape(b, q * r * r, h * w)


class _RoIAlignProduct(torch.autograd.Function):
    """features (B, C, H, W) -> (B*Q, C, r, r), given the row and column weights."""

    @staticmethod
    def forward(ctx, features: Tensor, wy: Tensor, wx: Tensor) -> Tensor:
        b, c, h, w = features.shape
        q, r = wy.shape[1], wy.shape[2]
        ctx.save_for_backward(wy, wx)
        ctx.feature_shape = (b, c, h, w)
        # In the weights' precision whatever autocast is on (it would pick bf16 for the product).
        with torch.autocast(features.device.type, enabled=False):
            out = torch.bmm(_bin_weights(wy, wx), features.reshape(b, c, h * w).transpose(1, 2))
        # Contiguous NCHW: a channels-last view would make the next 1x1 convolution's weight
        # gradient channels-last too, which DDP's buckets then copy (and warn about).
        return out.view(b * q, r * r, c).transpose(1, 2).contiguous().view(b * q, c, r, r)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        wy, wx = ctx.saved_tensors
        b, c, h, w = ctx.feature_shape
        q, r = wy.shape[1], wy.shape[2]
        upstream = grad.reshape(b, q, c, r * r).transpose(2, 3).reshape(b, q * r * r, c)
        with torch.autocast(grad.device.type, enabled=False):
            grad_features = torch.bmm(_bin_weights(wy, wx).transpose(1, 2),
                                      upstream.to(wy.dtype))
        return grad_features.transpose(1, 2).reshape(b, c, h, w), None, None


def roi_align_boxes(features: Tensor, boxes: Tensor, output_size: int) -> Tensor:
    """RoIAlign of ``features`` in each image's boxes, equal to
    ``torchvision.ops.roi_align(features, rois, output_size, 1.0, -1, aligned=True)``.

    Args:
        features: (B, C, H, W).
        boxes: (B, Q, 4) absolute (x1, y1, x2, y2) in feature cells, Q boxes per image.
        output_size: r, the bins per side.
    Returns:
        (B * Q, C, r, r), the RoIs in image-major order (as torchvision's with
        ``batch_index = arange(B).repeat_interleave(Q)``).
    """
    h, w = features.shape[-2:]
    r = output_size
    # float64 for float64 features, else float32: half-precision features are upcast, as
    # torchvision's RoIAlign is under autocast, and the result cast back.
    exact = torch.float64 if features.dtype == torch.float64 else torch.float32
    with torch.no_grad():  # the boxes get no gradient, as from torchvision's RoIAlign
        boxes = boxes.detach().to(exact)
        wx = axis_weights(boxes[..., 0], boxes[..., 2], r, w)  # (B, Q, r, W)
        wy = axis_weights(boxes[..., 1], boxes[..., 3], r, h)  # (B, Q, r, H)
    return _RoIAlignProduct.apply(features.to(exact), wy, wx).to(features.dtype)
