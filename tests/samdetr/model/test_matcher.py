"""Tests of the Hungarian matcher: optimality against brute force, cost formula, edge cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samdetr.model.matcher import HungarianMatcher


def random_case(seed: int, batch: int, num_queries: int, num_classes: int, num_targets: list[int]):
    """Random outputs/targets with boxes of positive area inside the image."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_queries, num_classes, generator=gen) * 3
    centres = torch.rand(batch, num_queries, 2, generator=gen) * 0.6 + 0.2
    sizes = torch.rand(batch, num_queries, 2, generator=gen) * 0.35 + 0.05
    outputs = {"pred_logits": logits, "pred_boxes": torch.cat([centres, sizes], -1)}
    targets = []
    for n in num_targets:
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        boxes = torch.cat(
            [
                torch.rand(n, 2, generator=gen) * 0.6 + 0.2,
                torch.rand(n, 2, generator=gen) * 0.35 + 0.05,
            ],
            -1,
        )
        targets.append({"labels": labels, "boxes": boxes})
    return outputs, targets


def ref_giou(a, b) -> float:
    """GIoU of two cxcywh boxes, written out in plain Python."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def ref_cost(
    logit: float, label: int, pbox, tbox, alpha=0.25, gamma=2.0, wc=2.0, wb=5.0, wg=2.0
) -> float:
    """Matching cost of one (query, target) pair from the formula in the spec."""
    p = 1 / (1 + math.exp(-logit))
    neg = (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
    pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
    l1 = sum(abs(x - y) for x, y in zip(pbox, tbox, strict=True))
    return wb * l1 + wc * (pos - neg) + wg * -ref_giou(pbox, tbox)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_queries=st.integers(1, 5),
    num_classes=st.integers(1, 4),
    data=st.data(),
)
def test_matcher_is_optimal_vs_brute_force(seed, num_queries, num_classes, data):
    num_targets = data.draw(st.integers(0, num_queries))
    outputs, targets = random_case(seed, 1, num_queries, num_classes, [num_targets])
    matcher = HungarianMatcher()
    ((pred_idx, tgt_idx),) = matcher(outputs, targets)

    assert pred_idx.dtype == tgt_idx.dtype == torch.int64
    assert len(pred_idx) == len(tgt_idx) == num_targets  # Q >= N: every target matched
    assert torch.equal(pred_idx, pred_idx.sort().values)
    assert len(set(pred_idx.tolist())) == num_targets and sorted(tgt_idx.tolist()) == list(
        range(num_targets)
    )

    logits, boxes = outputs["pred_logits"][0], outputs["pred_boxes"][0]
    labels, tboxes = targets[0]["labels"], targets[0]["boxes"]
    cost = [
        [
            ref_cost(
                logits[q, labels[j]].item(), labels[j].item(), boxes[q].tolist(), tboxes[j].tolist()
            )
            for j in range(num_targets)
        ]
        for q in range(num_queries)
    ]
    got = sum(cost[q][j] for q, j in zip(pred_idx.tolist(), tgt_idx.tolist(), strict=True))
    # target j goes to query perm[j]
    best = min(
        (
            sum(cost[perm[j]][j] for j in range(num_targets))
            for perm in itertools.permutations(range(num_queries), num_targets)
        ),
        default=0.0,
    )
    assert got == pytest.approx(best, abs=1e-4)


def test_cost_matrix_matches_formula():
    outputs, targets = random_case(0, 1, 4, 3, [3])
    matcher = HungarianMatcher(
        cost_class=1.5, cost_bbox=3.0, cost_giou=0.5, focal_alpha=0.3, focal_gamma=1.5
    )
    labels, tboxes = targets[0]["labels"], targets[0]["boxes"]
    cost = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_boxes"][0], labels, tboxes)
    assert cost.shape == (4, 3)
    for q in range(4):
        for j in range(3):
            ref = ref_cost(
                outputs["pred_logits"][0, q, labels[j]].item(),
                labels[j].item(),
                outputs["pred_boxes"][0, q].tolist(),
                tboxes[j].tolist(),
                alpha=0.3,
                gamma=1.5,
                wc=1.5,
                wb=3.0,
                wg=0.5,
            )
            assert cost[q, j].item() == pytest.approx(ref, abs=1e-5)


def test_batch_with_empty_targets():
    outputs, targets = random_case(1, 3, 6, 5, [2, 0, 4])
    indices = HungarianMatcher()(outputs, targets)
    assert [len(i) for i, _ in indices] == [2, 0, 4]
    pred_idx, tgt_idx = indices[1]
    assert pred_idx.dtype == tgt_idx.dtype == torch.int64
    assert pred_idx.shape == tgt_idx.shape == (0,)


def test_more_targets_than_queries_matches_q():
    outputs, targets = random_case(2, 1, 2, 3, [5])
    ((pred_idx, tgt_idx),) = HungarianMatcher()(outputs, targets)
    assert pred_idx.tolist() == [0, 1] and len(set(tgt_idx.tolist())) == 2


def test_perfect_predictions_are_matched_to_themselves():
    outputs, targets = random_case(3, 1, 5, 4, [5])
    perm = torch.tensor([3, 0, 4, 1, 2])  # query q predicts target perm[q]
    outputs["pred_boxes"][0] = targets[0]["boxes"][perm]
    outputs["pred_logits"][0] = -10.0
    outputs["pred_logits"][0, torch.arange(5), targets[0]["labels"][perm]] = 10.0
    ((pred_idx, tgt_idx),) = HungarianMatcher()(outputs, targets)
    assert pred_idx.tolist() == list(range(5))
    assert tgt_idx.tolist() == perm.tolist()


# an infinite logit only saturates the sigmoid (finite cost), so it is not in this list
@pytest.mark.parametrize(
    ("key", "bad"),
    [("pred_logits", float("nan")), ("pred_boxes", float("nan")), ("pred_boxes", float("inf"))],
)
def test_non_finite_predictions_raise(key, bad):
    outputs, targets = random_case(4, 1, 3, 2, [2])
    outputs[key][0, 1, 0] = bad
    with pytest.raises(ValueError, match="non-finite"):
        HungarianMatcher()(outputs, targets)


def test_target_validation():
    outputs, targets = random_case(5, 2, 3, 4, [1, 2])
    matcher = HungarianMatcher()
    bad = [dict(t) for t in targets]
    bad[1]["labels"] = torch.tensor([0, 4])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        matcher(outputs, bad)
    bad[1]["labels"] = torch.tensor([-1, 0])
    with pytest.raises(ValueError):
        matcher(outputs, bad)
    bad[1]["labels"] = torch.tensor([0.0, 1.0])
    with pytest.raises(TypeError):
        matcher(outputs, bad)
    with pytest.raises(ValueError, match="target dicts"):
        matcher(outputs, targets[:1])
    with pytest.raises(ValueError, match="pred_boxes"):
        matcher({"pred_logits": outputs["pred_logits"]}, targets)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cost_class": -1.0},
        {"cost_class": 0, "cost_bbox": 0, "cost_giou": 0},
        {"focal_alpha": 1.5},
        {"focal_gamma": float("nan")},
    ],
)
def test_invalid_matcher_arguments(kwargs):
    with pytest.raises(ValueError):
        HungarianMatcher(**kwargs)


def test_no_grad_through_matcher():
    outputs, targets = random_case(6, 1, 4, 3, [2])
    outputs = {k: v.requires_grad_() for k, v in outputs.items()}
    ((pred_idx, _),) = HungarianMatcher()(outputs, targets)
    assert not pred_idx.requires_grad
