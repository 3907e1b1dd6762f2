"""Tests of SetCriterion (focal / L1 / GIoU losses per decoder layer) and num_boxes_for."""

from __future__ import annotations

import pytest
import torch

from samdetr.model.criterion import SetCriterion, distributed_mean, num_boxes_for
from samdetr.model.matcher import HungarianMatcher

NUM_CLASSES = 5


def make_outputs(batch=2, num_queries=6, num_aux=2, seed=0, requires_grad=True):
    """Random leaf tensors for the last layer plus ``num_aux`` aux layers."""
    gen = torch.Generator().manual_seed(seed)

    def layer():
        logits = torch.randn(batch, num_queries, NUM_CLASSES, generator=gen)
        boxes = torch.cat(
            [
                torch.rand(batch, num_queries, 2, generator=gen) * 0.6 + 0.2,
                torch.rand(batch, num_queries, 2, generator=gen) * 0.3 + 0.05,
            ],
            -1,
        )
        return {
            "pred_logits": logits.requires_grad_(requires_grad),
            "pred_boxes": boxes.requires_grad_(requires_grad),
        }

    out = layer()
    out["aux_outputs"] = [layer() for _ in range(num_aux)]
    return out


def make_targets(counts, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "labels": torch.randint(0, NUM_CLASSES, (n,), generator=gen),
            "boxes": torch.cat(
                [
                    torch.rand(n, 2, generator=gen) * 0.6 + 0.2,
                    torch.rand(n, 2, generator=gen) * 0.3 + 0.05,
                ],
                -1,
            ),
        }
        for n in counts
    ]


@pytest.fixture
def criterion():
    return SetCriterion(HungarianMatcher(), NUM_CLASSES)


def test_keys_for_all_layers(criterion):
    outputs, targets = make_outputs(num_aux=3), make_targets([2, 3])
    losses = criterion(outputs, targets, num_boxes_for(targets))
    expected = {"loss_ce", "loss_bbox", "loss_giou", "class_error"}
    expected |= {f"{k}_{i}" for k in ("loss_ce", "loss_bbox", "loss_giou") for i in range(3)}
    assert set(losses) == expected
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_missing_or_empty_aux_outputs(criterion):
    targets = make_targets([2, 1])
    outputs = make_outputs(num_aux=0)
    assert set(criterion(outputs, targets, 3.0)) == {
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "class_error",
    }
    del outputs["aux_outputs"]
    assert set(criterion(outputs, targets, 3.0)) == {
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "class_error",
    }


def test_perfect_boxes_give_zero_box_losses(criterion):
    targets = make_targets([3, 2])
    outputs = make_outputs(num_aux=1, requires_grad=False)
    for layer in [outputs, *outputs["aux_outputs"]]:
        for b, t in enumerate(targets):
            n = len(t["labels"])
            layer["pred_boxes"][b, :n] = t["boxes"]
            layer["pred_logits"][b, :n] = -8.0
            layer["pred_logits"][b, torch.arange(n), t["labels"]] = 8.0
    losses = criterion(outputs, targets, num_boxes_for(targets))
    for key in ("loss_bbox", "loss_giou", "loss_bbox_0", "loss_giou_0"):
        assert losses[key].item() == pytest.approx(0.0, abs=1e-6), key
    assert losses["class_error"].item() == 0.0


def test_no_targets_anywhere_is_finite_and_differentiable(criterion):
    targets = make_targets([0, 0])
    outputs = make_outputs(num_aux=1)
    num_boxes = num_boxes_for(targets)
    assert num_boxes.item() == 1.0  # clamped
    losses = criterion(outputs, targets, num_boxes)
    assert all(torch.isfinite(v) for v in losses.values())
    for key in ("loss_bbox", "loss_giou", "loss_bbox_0", "loss_giou_0"):
        assert losses[key].item() == 0.0 and losses[key].requires_grad, key
    assert losses["loss_ce"].item() > 0  # every logit is pushed towards background
    criterion.weighted_total(losses).backward()
    assert (
        torch.isfinite(outputs["pred_logits"].grad).all()
        and outputs["pred_logits"].grad.abs().sum() > 0
    )
    assert outputs["pred_boxes"].grad is None or not outputs["pred_boxes"].grad.any()


def test_gradients_reach_logits_and_boxes_of_every_layer(criterion):
    outputs, targets = make_outputs(num_aux=2), make_targets([2, 0])
    criterion.weighted_total(criterion(outputs, targets, 2.0)).backward()
    for layer in [outputs, *outputs["aux_outputs"]]:
        for key in ("pred_logits", "pred_boxes"):
            grad = layer[key].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, key


def test_num_boxes_scales_losses(criterion):
    outputs, targets = make_outputs(), make_targets([2, 3])
    one = criterion(outputs, targets, 1.0)
    four = criterion(outputs, targets, torch.tensor(4.0))
    for key in one:
        if key.startswith("loss_"):
            assert four[key].item() == pytest.approx(one[key].item() / 4, rel=1e-6), key
    assert four["class_error"].item() == one["class_error"].item()


def test_losses_match_hand_computation():
    """One query, one target: focal, L1 and 1 - GIoU written out by hand."""
    criterion = SetCriterion(HungarianMatcher(), 3, focal_alpha=0.25, focal_gamma=2.0)
    logits = torch.tensor([[[0.5, -1.0, 2.0]]])
    outputs = {"pred_logits": logits, "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])}
    targets = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    losses = criterion(outputs, targets, 2.0)

    p = logits.sigmoid()[0, 0]
    onehot = torch.tensor([0.0, 0.0, 1.0])
    p_t = p * onehot + (1 - p) * (1 - onehot)
    alpha_t = 0.25 * onehot + 0.75 * (1 - onehot)
    focal = -alpha_t * (1 - p_t) ** 2 * p_t.log()
    assert losses["loss_ce"].item() == pytest.approx(focal.sum().item() / 2, rel=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(0.4 / 2, rel=1e-6)
    # IoU = 0.04 / 0.16, the hull is the target itself, so GIoU = IoU = 0.25
    assert losses["loss_giou"].item() == pytest.approx(0.75 / 2, rel=1e-6)


def test_weighted_total(criterion):
    outputs, targets = make_outputs(num_aux=1), make_targets([1, 2])
    losses = criterion(outputs, targets, 3.0)
    expected = sum(
        w * (losses[k] + losses[f"{k}_0"])
        for k, w in (("loss_ce", 2), ("loss_bbox", 5), ("loss_giou", 2))
    )
    assert criterion.weighted_total(losses).item() == pytest.approx(expected.item(), rel=1e-6)


def test_weight_overrides():
    crit = SetCriterion(
        HungarianMatcher(), NUM_CLASSES, weight_bbox=1.0, weight_dict={"loss_ce_0": 0.0}
    )
    losses = {
        "loss_ce": torch.tensor(1.0),
        "loss_ce_0": torch.tensor(7.0),
        "loss_bbox_0": torch.tensor(3.0),
        "class_error": torch.tensor(50.0),
    }
    assert crit.weighted_total(losses).item() == pytest.approx(2.0 + 0.0 + 3.0)
    with pytest.raises(ValueError, match="unknown weight_dict key"):
        SetCriterion(HungarianMatcher(), NUM_CLASSES, weight_dict={"loss_mask": 1.0})


def test_num_boxes_for_counts_and_reduces():
    targets = make_targets([2, 0, 3])
    assert num_boxes_for(targets).item() == 5.0
    seen = []

    def fake_mean(t):
        seen.append(t.item())
        return t / 10  # as if the other workers had no boxes

    assert num_boxes_for(targets, world_reduce=fake_mean).item() == 1.0  # 0.5 clamped to 1
    assert seen == [5.0]
    # without an initialised process group the helper is the identity
    assert distributed_mean(torch.tensor(3.0)).item() == 3.0


def test_input_validation(criterion):
    outputs, targets = make_outputs(), make_targets([1, 1])
    for bad in (0.0, -1.0, float("nan"), torch.tensor([1.0, 2.0])):
        with pytest.raises(ValueError):
            criterion(outputs, targets, bad)
    with pytest.raises(TypeError):
        criterion(outputs, targets, "2")
    with pytest.raises(ValueError, match="class logits"):
        SetCriterion(HungarianMatcher(), NUM_CLASSES + 1)(outputs, targets, 1.0)
    bad_targets = [dict(t) for t in targets]
    bad_targets[0]["labels"] = torch.tensor([NUM_CLASSES])
    with pytest.raises(ValueError, match="labels"):
        criterion(outputs, bad_targets, 1.0)
    with pytest.raises(ValueError):
        SetCriterion(HungarianMatcher(), 0)
