"""The matmul RoIAlign (samdetr.model.roi_align) equals torchvision's roi_align(aligned=True,
sampling_ratio=-1), forward and backward, in float32 and float64, on random boxes and on the
edge cases: boxes at and beyond the border, tiny, inverted and whole-image boxes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import roi_align

from samdetr.config import ModelConfig
from samdetr.model.roi_align import roi_align_boxes
from samdetr.model.semantic_aligner import SemanticAligner


def _torchvision(features, boxes, size):
    b, q = boxes.shape[:2]
    index = torch.arange(b, dtype=boxes.dtype).repeat_interleave(q)
    rois = torch.cat([index[:, None], boxes.reshape(-1, 4)], dim=1)
    return roi_align(features, rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _compare(features, boxes, size, tolerance):
    features = features.detach().requires_grad_(True)
    want = _torchvision(features, boxes, size)
    got = roi_align_boxes(features, boxes, size)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, **tolerance)
    upstream = torch.randn_like(want)
    (grad_want,) = torch.autograd.grad(want, features, upstream)
    (grad_got,) = torch.autograd.grad(got, features, upstream)
    torch.testing.assert_close(grad_got, grad_want, **tolerance)


TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5},
             torch.float64: {"rtol": 1e-12, "atol": 1e-12}}


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 24), width=st.integers(1, 24), size=st.integers(1, 8),
    queries=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_equals_torchvision_on_random_boxes(height, width, size, queries, seed, dtype):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 3, height, width, generator=generator, dtype=dtype)
    extent = torch.tensor([width, height], dtype=dtype)
    # Corners from 30% outside the map to 30% beyond it. (Boxes inverted along one axis only
    # crash torchvision's kernel, so they are compared in test_inverted_boxes_give_zeros.)
    corners = (torch.rand(2, queries, 2, 2, generator=generator, dtype=dtype) * 1.6 - 0.3) * extent
    boxes = torch.cat([corners.min(dim=2).values, corners.max(dim=2).values], dim=-1)
    _compare(features, boxes, size, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_torchvision_on_edge_cases(dtype):
    h, w = 9, 13
    features = torch.randn(1, 4, h, w, dtype=dtype, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[
        [0, 0, w, h],                  # the whole map
        [-5, -5, w + 5, h + 5],        # beyond every border
        [w - 0.3, h - 0.3, w + 4, h + 4],  # from the last cell outwards
        [-3, -3, 0.2, 0.2],            # ending just inside the first cell
        [4, 4, 4, 4],                  # no extent
        [6, 5, 3, 2],                  # inverted
        [2.25, 3.5, 2.75, 3.75],       # tiny
        [0, 0, w * 0.6, h * 0.6],      # the valid part of a padded map
        [-1.4, 1, w + 1.4, 2],         # sample points exactly outside by more than one cell
    ]], dtype=dtype)
    for size in (1, 3, 7):
        _compare(features, boxes, size, TOLERANCE[dtype])


def test_non_finite_boxes_sample_nothing():
    features = torch.randn(1, 2, 6, 6)
    boxes = torch.tensor([[[float("nan"), 1.0, 4.0, 5.0], [1.0, 1.0, float("inf"), 3.0]]])
    assert roi_align_boxes(features, boxes, 3).abs().max() == 0


def test_inverted_boxes_give_zeros():
    features = torch.randn(1, 2, 8, 8)
    boxes = torch.tensor([[[5.0, 1.0, 2.0, 6.0], [1.0, 6.0, 6.0, 2.0]]])
    assert roi_align_boxes(features, boxes, 4).abs().max() == 0


def test_a_taller_map_gives_the_same_values():
    features = torch.randn(2, 5, 17, 6, dtype=torch.float64)
    boxes = torch.tensor([[[1, 2, 5, 15], [0, 0, 6, 17]], [[-2, 3, 4, 9], [2, 2, 3, 3]]],
                         dtype=torch.float64)
    _compare(features, boxes, 4, TOLERANCE[torch.float64])


def test_the_boxes_get_no_gradient():
    features = torch.randn(1, 2, 6, 6, requires_grad=True)
    boxes = torch.tensor([[[1.0, 1.0, 4.0, 5.0]]], requires_grad=True)
    roi_align_boxes(features, boxes, 3).sum().backward()
    assert boxes.grad is None and features.grad is not None


def test_the_aligner_gives_the_same_with_either_kernel():
    torch.manual_seed(0)
    aligner = SemanticAligner(32, 4, predict_scales=True, roi_size=5, roi_align="torchvision")
    for p in aligner.parameters():  # the point head starts at zero; move it off
        torch.nn.init.normal_(p, std=0.2)
    aligner.double()  # float64: the two kernels' sums differ in order only
    tgt = torch.randn(2, 6, 32, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 32, 7, 9, dtype=torch.float64, requires_grad=True)
    boxes = torch.rand(2, 6, 4, dtype=torch.float64) * 0.5 + 0.25
    valid = torch.tensor([[1.0, 1.0], [0.7, 0.8]], dtype=torch.float64)
    results = []
    for kernel in ("torchvision", "matmul"):
        aligner.roi_align = kernel
        out = aligner(tgt, memory, boxes, valid)
        loss = out["content"].square().sum() + out["scales"].sum() + out["pos"].sum()
        grads = torch.autograd.grad(loss, [tgt, memory, *aligner.parameters()],
                                    allow_unused=True)
        results.append((out, grads))
    (a, grads_a), (b, grads_b) = results
    for key in ("content", "points", "scales"):
        torch.testing.assert_close(b[key], a[key], rtol=1e-10, atol=1e-10)
    for x, y in zip(grads_b, grads_a, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


def test_bad_kernel_names_are_refused():
    with pytest.raises(ValueError, match="model.roi_align must be one of"):
        ModelConfig(roi_align="cuda")
    with pytest.raises(ValueError, match="roi_align must be auto, matmul or torchvision"):
        SemanticAligner(32, 4, predict_scales=False, roi_align="fast")


def test_half_precision_features_are_computed_in_float32():
    features = torch.randn(1, 3, 8, 10)
    boxes = torch.tensor([[[1.0, 1.5, 7.0, 6.0], [0.0, 0.0, 10.0, 8.0]]])
    got = roi_align_boxes(features.bfloat16(), boxes, 4)
    assert got.dtype == torch.bfloat16
    want = _torchvision(features.bfloat16().float(), boxes, 4)
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)


def test_autocast_runs_the_product_in_float32():
    features = torch.randn(1, 3, 8, 10, requires_grad=True)
    boxes = torch.tensor([[[1.0, 1.5, 7.0, 6.0]]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align_boxes(features.bfloat16(), boxes, 4)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert features.grad is not None and features.grad.dtype == torch.float32
