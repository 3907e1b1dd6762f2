"""Property tests of the box conventions: normalised (cx, cy, w, h) <-> (x1, y1, x2, y2), GIoU."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_convert, generalized_box_iou

# sizes bounded away from 0 so every box has positive area (GIoU is undefined otherwise)
coord = st.floats(0.0, 1.0, allow_nan=False)
size = st.floats(1e-3, 1.0, allow_nan=False)
cxcywh_box = st.tuples(coord, coord, size, size)
cxcywh_boxes = st.lists(cxcywh_box, min_size=1, max_size=8)


def as_xyxy(boxes) -> torch.Tensor:
    return box_convert(torch.tensor(boxes, dtype=torch.float64), "cxcywh", "xyxy")


@settings(max_examples=60, deadline=None)
@given(cxcywh_boxes)
def test_cxcywh_xyxy_round_trip(boxes):
    original = torch.tensor(boxes, dtype=torch.float64)
    xyxy = box_convert(original, "cxcywh", "xyxy")
    assert (xyxy[:, 2:] >= xyxy[:, :2]).all()
    assert torch.allclose(xyxy[:, 2:] - xyxy[:, :2], original[:, 2:])  # width/height preserved
    assert torch.allclose(box_convert(xyxy, "xyxy", "cxcywh"), original, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(coord, coord, coord, coord), min_size=1, max_size=8))
def test_xyxy_cxcywh_round_trip(corners):
    # sort each axis so (x1, y1) <= (x2, y2)
    xyxy = torch.tensor(
        [(min(a, c), min(b, d), max(a, c), max(b, d)) for a, b, c, d in corners],
        dtype=torch.float64,
    )
    cxcywh = box_convert(xyxy, "xyxy", "cxcywh")
    assert (cxcywh[:, 2:] >= 0).all()
    assert (
        (cxcywh[:, :2] >= 0) & (cxcywh[:, :2] <= 1)
    ).all()  # centres of in-image boxes stay in [0, 1]
    assert torch.allclose(box_convert(cxcywh, "cxcywh", "xyxy"), xyxy, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(cxcywh_boxes)
def test_giou_of_box_with_itself_is_one(boxes):
    xyxy = as_xyxy(boxes)
    assert torch.allclose(
        torch.diag(generalized_box_iou(xyxy, xyxy)), torch.ones(len(boxes), dtype=torch.float64)
    )


@settings(max_examples=60, deadline=None)
@given(cxcywh_boxes, cxcywh_boxes)
def test_giou_bounded_and_symmetric(first, second):
    a, b = as_xyxy(first), as_xyxy(second)
    giou = generalized_box_iou(a, b)
    assert giou.shape == (len(first), len(second))
    assert ((giou >= -1 - 1e-9) & (giou <= 1 + 1e-9)).all()
    assert torch.allclose(giou, generalized_box_iou(b, a).T)


@settings(max_examples=40, deadline=None)
@given(cxcywh_box, st.floats(-0.5, 0.5, allow_nan=False), st.floats(-0.5, 0.5, allow_nan=False))
def test_giou_invariant_to_shared_translation(box, dx, dy):
    a = torch.tensor([box], dtype=torch.float64)
    b = a.clone()
    b[:, 2:] *= 0.5  # a smaller box with the same centre
    shift = torch.tensor([dx, dy, 0.0, 0.0], dtype=torch.float64)
    before = generalized_box_iou(as_xyxy(a.tolist()), as_xyxy(b.tolist()))
    after = generalized_box_iou(as_xyxy((a + shift).tolist()), as_xyxy((b + shift).tolist()))
    # concentric boxes: GIoU = IoU = area ratio = 0.25, wherever they sit
    assert torch.allclose(before, torch.tensor([[0.25]], dtype=torch.float64))
    assert torch.allclose(after, before)
