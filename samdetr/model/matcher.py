"""Hungarian matching between predicted and ground-truth boxes (SAM-DETR / Deformable-DETR style).

The matcher solves, independently for every image, a minimum-cost bipartite assignment between
the Q predictions and the N_i targets of that image. The cost mixes

* a focal-style classification cost on the sigmoid probability of the target class,
* the L1 distance between normalised (cx, cy, w, h) boxes,
* the negative generalised IoU of the boxes (computed in (x1, y1, x2, y2)).

Box convention throughout: normalised (cx, cy, w, h) in [0, 1] relative to the unpadded image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher", "validate_outputs", "validate_targets"]

# Added inside the logs of the focal class cost, as in Deformable DETR, so p = 0 or 1 stays finite.
_LOG_EPS = 1e-8


def _check_real(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Return ``value`` as a float after checking it is a finite, non-negative real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "> 0" if not allow_zero else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def validate_outputs(outputs: Mapping[str, Tensor]) -> tuple[int, int, int]:
    """Check the model-output dict of one decoder layer and return ``(B, Q, K)``.

    Args:
        outputs: mapping with ``pred_logits`` (B, Q, K) raw class logits and ``pred_boxes``
            (B, Q, 4) normalised (cx, cy, w, h). Other keys are ignored.
    """
    if not isinstance(outputs, Mapping):
        raise TypeError(f"outputs must be a dict, got {type(outputs).__name__}")
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise ValueError(f"outputs is missing {key!r} (keys present: {sorted(outputs)})")
        if not isinstance(outputs[key], Tensor):
            raise TypeError(
                f"outputs[{key!r}] must be a torch.Tensor, got {type(outputs[key]).__name__}"
            )
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.dim() != 3:
        raise ValueError(f"pred_logits must have shape (B, Q, K), got {tuple(logits.shape)}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"pred_boxes must have shape (B, Q, 4), got {tuple(boxes.shape)}")
    if logits.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"pred_logits {tuple(logits.shape)} and pred_boxes {tuple(boxes.shape)} "
            "disagree on (B, Q)"
        )
    if not logits.is_floating_point() or not boxes.is_floating_point():
        raise TypeError(
            "pred_logits and pred_boxes must be floating point, "
            f"got {logits.dtype} and {boxes.dtype}"
        )
    batch, num_queries, num_classes = logits.shape
    return batch, num_queries, num_classes


def validate_targets(
    targets: Sequence[Mapping[str, Tensor]], batch_size: int, num_classes: int
) -> None:
    """Check a list of per-image target dicts.

    Args:
        targets: list of length ``batch_size``; each dict has ``labels`` int64 (N_i,) with values
            in [0, num_classes) and ``boxes`` float (N_i, 4) normalised (cx, cy, w, h);
            N_i may be 0.
        batch_size: B of the predictions.
        num_classes: K, the number of class logits.
    """
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
        raise TypeError(
            f"targets must be a list of dicts (one per image), got {type(targets).__name__}"
        )
    if len(targets) != batch_size:
        raise ValueError(f"got {len(targets)} target dicts for a batch of {batch_size} predictions")
    for i, tgt in enumerate(targets):
        if not isinstance(tgt, Mapping) or "labels" not in tgt or "boxes" not in tgt:
            raise ValueError(f"targets[{i}] must be a dict with 'labels' and 'boxes'")
        labels, boxes = tgt["labels"], tgt["boxes"]
        if not isinstance(labels, Tensor) or not isinstance(boxes, Tensor):
            raise TypeError(f"targets[{i}]['labels'] and ['boxes'] must be torch.Tensors")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"targets[{i}]['labels'] must be an integer tensor, got {labels.dtype}")
        if not boxes.is_floating_point():
            raise TypeError(f"targets[{i}]['boxes'] must be floating point, got {boxes.dtype}")
        if labels.dim() != 1:
            raise ValueError(
                f"targets[{i}]['labels'] must have shape (N,), got {tuple(labels.shape)}"
            )
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or boxes.shape[0] != labels.shape[0]:
            raise ValueError(
                f"targets[{i}]['boxes'] must have shape (N, 4) with N = len(labels) = "
                f"{labels.shape[0]}, "
                f"got {tuple(boxes.shape)}"
            )
        if labels.numel() > 0:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= num_classes:
                raise ValueError(
                    f"targets[{i}]['labels'] has values in [{lo}, {hi}] but the model has "
                    f"K = {num_classes} class logits, so labels must lie in [0, {num_classes}); "
                    "K should be max category id + 1"
                )
            if not torch.isfinite(boxes).all():
                raise ValueError(f"targets[{i}]['boxes'] contains NaN or inf")


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets, solved per image with scipy.

    Cost of assigning query q to target j (shape (Q, N_i) per image)::

        C = cost_bbox * L1(box_q, box_j)
          + cost_class * focal(p_q[label_j])
          + cost_giou * -GIoU(box_q, box_j)

    where ``focal(p) = alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` (positive minus
    negative focal term) on the sigmoid probability of the target's class.

    Args:
        cost_class: weight of the focal classification cost.
        cost_bbox: weight of the L1 cost between (cx, cy, w, h) boxes.
        cost_giou: weight of the negative-GIoU cost.
        focal_alpha: focal loss alpha in [0, 1].
        focal_gamma: focal loss gamma (>= 0).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.cost_class = _check_real("cost_class", cost_class)
        self.cost_bbox = _check_real("cost_bbox", cost_bbox)
        self.cost_giou = _check_real("cost_giou", cost_giou)
        if self.cost_class == self.cost_bbox == self.cost_giou == 0:
            raise ValueError("at least one of cost_class, cost_bbox, cost_giou must be > 0")
        self.focal_alpha = _check_real("focal_alpha", focal_alpha)
        if self.focal_alpha > 1:
            raise ValueError(f"focal_alpha must lie in [0, 1], got {focal_alpha}")
        self.focal_gamma = _check_real("focal_gamma", focal_gamma)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, "
            f"focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}"
        )

    @torch.no_grad()
    def cost_matrix(
        self, pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor
    ) -> Tensor:
        """Matching cost for a single image.

        Args:
            pred_logits: (Q, K) raw class logits.
            pred_boxes: (Q, 4) normalised (cx, cy, w, h).
            tgt_labels: (N,) int64 class ids in [0, K).
            tgt_boxes: (N, 4) normalised (cx, cy, w, h).

        Returns:
            (Q, N) float32 cost matrix on the predictions' device.
        """
        # float32 so half-precision logits do not underflow inside the logs
        prob = pred_logits.float().sigmoid()[:, tgt_labels]  # (Q, N)
        pred_boxes = pred_boxes.float()
        tgt_boxes = tgt_boxes.to(device=pred_boxes.device, dtype=torch.float32)

        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + _LOG_EPS).log()
        pos = alpha * (1 - prob).pow(gamma) * -(prob + _LOG_EPS).log()
        cost_class = pos - neg

        cost_bbox = torch.cdist(pred_boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(
            box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        )
        return (
            self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        )

    @torch.no_grad()
    def forward(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        check: bool = True,
    ) -> list[tuple[Tensor, Tensor]]:
        """Match predictions to targets.

        Args:
            outputs: dict with ``pred_logits`` (B, Q, K) raw logits and ``pred_boxes`` (B, Q, 4)
                normalised (cx, cy, w, h). Other keys (e.g. ``aux_outputs``) are ignored.
            targets: list of B dicts with ``labels`` int64 (N_i,) and ``boxes`` (N_i, 4) normalised
                (cx, cy, w, h).
            check: validate ``outputs`` and ``targets`` first. The criterion validates once per
                batch and passes ``False`` for each decoder layer (the target checks synchronise
                with the GPU).

        Returns:
            List of B pairs ``(pred_idx, tgt_idx)``, int64 CPU tensors of length min(Q, N_i):
            query ``pred_idx[k]`` is matched to target ``tgt_idx[k]``; ``pred_idx`` is ascending.
        """
        if check:
            batch, num_queries, _ = validate_outputs(outputs)
            validate_targets(targets, batch, outputs["pred_logits"].shape[-1])
        else:
            batch, num_queries = outputs["pred_logits"].shape[:2]
        sizes = [int(t["labels"].shape[0]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0 or num_queries == 0:
            return [(empty, empty.clone()) for _ in range(batch)]
        device = outputs["pred_logits"].device
        # Every query against every target of the batch, moved to the CPU once per layer (not
        # once per image); image b's block is its own queries against its own targets.
        cost = self.cost_matrix(
            outputs["pred_logits"].flatten(0, 1),
            outputs["pred_boxes"].flatten(0, 1),
            torch.cat([t["labels"] for t in targets]).to(device, torch.int64),
            torch.cat([t["boxes"].to(device) for t in targets]),
        ).view(batch, num_queries, -1).cpu()
        indices = []
        for b, block in enumerate(cost.split(sizes, dim=-1)):
            own = block[b]  # (Q, N_b)
            if own.shape[1] == 0:
                indices.append((empty, empty.clone()))
                continue
            if not torch.isfinite(own).all():
                raise ValueError(
                    f"matching cost for image {b} contains NaN or inf; most likely the "
                    "predictions are non-finite (check pred_logits / pred_boxes for NaN/inf, "
                    "e.g. from a diverging training run) or predicted boxes have zero area"
                )
            rows, cols = linear_sum_assignment(own.numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
