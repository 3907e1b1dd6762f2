"""Set-prediction losses of SAM-DETR: sigmoid focal classification, L1 and GIoU box losses.

Every decoder layer (the last one and each entry of ``aux_outputs``) is matched to the targets by
its own Hungarian matching, then scored with

* ``loss_ce``: sigmoid focal loss over all Q x K logits against a one-hot target (matched queries
  carry their target class, unmatched queries are all-zero), summed and divided by ``num_boxes``;
* ``loss_bbox``: L1 between matched normalised (cx, cy, w, h) boxes, summed / ``num_boxes``;
* ``loss_giou``: 1 - GIoU of matched boxes (in (x1, y1, x2, y2)), summed / ``num_boxes``.

Aux layer i gets the suffix ``_i`` (``loss_ce_0`` ... for decoder layer 0). ``num_boxes`` is passed
in by the caller so that it can be averaged over distributed workers; see :func:`num_boxes_for`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from .matcher import HungarianMatcher, validate_outputs, validate_targets

__all__ = ["SetCriterion", "distributed_mean", "num_boxes_for"]

_BASE_KEYS = ("loss_ce", "loss_bbox", "loss_giou")
# "loss_ce", "loss_bbox_3", ...: base name and optional aux-layer index
_LOSS_KEY = re.compile(r"^(loss_ce|loss_bbox|loss_giou)(?:_(\d+))?$")


def distributed_mean(value: Tensor) -> Tensor:
    """Mean of ``value`` over all workers if torch.distributed is initialised, else ``value``."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return value
    value = value.clone()  # all_reduce works in place; leave the caller's tensor alone
    dist.all_reduce(value)
    return value / dist.get_world_size()


def num_boxes_for(
    targets: Sequence[Mapping[str, Tensor]],
    device: torch.device | str | None = None,
    world_reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Loss normaliser: number of target boxes in the batch, optionally averaged over workers.

    Args:
        targets: list of per-image dicts with ``labels`` (N_i,).
        device: device of the returned tensor (the one the collective needs, e.g. the GPU).
        world_reduce: optional callable mapping the local count (0-dim float tensor) to the mean
            count over workers, e.g. :func:`distributed_mean`. ``None`` keeps the local count.

    Returns:
        0-dim float32 tensor, clamped to >= 1 so a batch without boxes does not divide by zero.
    """
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
        raise TypeError(
            f"targets must be a list of dicts (one per image), got {type(targets).__name__}"
        )
    count = sum(int(t["labels"].shape[0]) for t in targets)
    total = torch.tensor(float(count), dtype=torch.float32, device=device)
    if world_reduce is not None:
        total = world_reduce(total)
        if not isinstance(total, Tensor):
            raise TypeError(f"world_reduce must return a torch.Tensor, got {type(total).__name__}")
    return total.clamp(min=1)


def _gather_matched(
    indices: list[tuple[Tensor, Tensor]], targets: Sequence[Mapping[str, Tensor]], like: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flatten a per-image matching into (batch_idx, query_idx, labels, boxes) of the M pairs.

    Returns int64 (M,), int64 (M,), int64 (M,) class ids and (M, 4) cxcywh target boxes, all on
    the device of ``like``.
    """
    device = like.device
    batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    pairs = list(zip(targets, indices, strict=True))
    labels = torch.cat([t["labels"].to(device)[tgt.to(device)] for t, (_, tgt) in pairs])
    boxes = torch.cat([t["boxes"].to(device)[tgt.to(device)] for t, (_, tgt) in pairs])
    return batch_idx.to(device), query_idx.to(device), labels.long(), boxes


class SetCriterion(nn.Module):
    """Hungarian-matched focal / L1 / GIoU losses on every decoder layer.

    Args:
        matcher: assigns predictions to targets; called once per decoder layer.
        num_classes: K, the number of class logits (max category id + 1, no no-object logit).
        weight_class: weight of ``loss_ce`` (every layer) in :meth:`weighted_total`.
        weight_bbox: weight of ``loss_bbox`` (every layer).
        weight_giou: weight of ``loss_giou`` (every layer).
        focal_alpha: alpha of the sigmoid focal loss.
        focal_gamma: gamma of the sigmoid focal loss.
        weight_dict: optional overrides, keyed by base name (``"loss_ce"``) or per layer
            (``"loss_ce_0"``); a per-layer key wins over the base key.
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        num_classes: int,
        *,
        weight_class: float = 2.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        weight_dict: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if not callable(matcher):
            raise TypeError(
                f"matcher must be callable (e.g. HungarianMatcher), got {type(matcher).__name__}"
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"num_classes must be a positive int (max category id + 1), got {num_classes!r}"
            )
        if not 0 <= focal_alpha <= 1:
            raise ValueError(f"focal_alpha must lie in [0, 1], got {focal_alpha}")
        if not (math.isfinite(focal_gamma) and focal_gamma >= 0):
            raise ValueError(f"focal_gamma must be finite and >= 0, got {focal_gamma}")
        self.matcher = matcher
        self.num_classes = num_classes
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

        weights = {"loss_ce": weight_class, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        for key, value in (weight_dict or {}).items():
            if not _LOSS_KEY.match(key):
                raise ValueError(
                    f"unknown weight_dict key {key!r}; expected one of {_BASE_KEYS}, "
                    "optionally with a '_<layer>' suffix"
                )
            weights[key] = value
        for key, value in weights.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ValueError(f"loss weight {key!r} must be a finite number, got {value!r}")
        self.weight_dict: dict[str, float] = {k: float(v) for k, v in weights.items()}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, focal_alpha={self.focal_alpha}, "
            f"focal_gamma={self.focal_gamma}, weight_dict={self.weight_dict}"
        )

    @staticmethod
    def _normaliser(num_boxes: float | Tensor, like: Tensor) -> Tensor:
        """``num_boxes`` as a 0-dim tensor with the dtype/device of ``like``; checks it is > 0."""
        if isinstance(num_boxes, Tensor):
            if num_boxes.numel() != 1:
                raise ValueError(f"num_boxes must be a scalar, got shape {tuple(num_boxes.shape)}")
            value = num_boxes.detach().reshape(())
        elif isinstance(num_boxes, (int, float)) and not isinstance(num_boxes, bool):
            value = torch.tensor(float(num_boxes))
        else:
            raise TypeError(
                f"num_boxes must be a float or a 0-dim tensor, got {type(num_boxes).__name__}"
            )
        value = value.to(device=like.device, dtype=like.dtype)
        # one host sync per step; worth it to catch a caller that forgot the clamp to >= 1
        if not bool(torch.isfinite(value)) or bool(value <= 0):
            raise ValueError(
                "num_boxes must be finite and > 0 (clamp it to >= 1, see num_boxes_for), "
                f"got {float(value)}"
            )
        return value

    def layer_losses(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        num_boxes: Tensor,
        indices: list[tuple[Tensor, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """Losses of one decoder layer (unsuffixed keys).

        Args:
            outputs: ``pred_logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4) normalised cxcywh.
            targets: list of B dicts with ``labels`` (N_i,) and ``boxes`` (N_i, 4) normalised
                cxcywh.
            num_boxes: 0-dim tensor, the (already averaged and clamped) box count.
            indices: matching from the matcher; computed here when ``None``.

        Returns:
            ``{"loss_ce", "loss_bbox", "loss_giou"}`` 0-dim tensors.
        """
        # Losses in float32 even under bf16/fp16 autocast: the focal terms need the precision.
        logits, pred_boxes = outputs["pred_logits"].float(), outputs["pred_boxes"].float()
        if indices is None:
            indices = self.matcher(outputs, targets)
        batch_idx, query_idx, tgt_labels, tgt_boxes = _gather_matched(indices, targets, logits)
        tgt_boxes = tgt_boxes.to(pred_boxes.dtype)

        # one-hot over K; unmatched queries are all-zero, i.e. background for every class
        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, tgt_labels] = 1.0
        focal = sigmoid_focal_loss(
            logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none"
        )
        loss_ce = focal.sum() / num_boxes

        # indexing keeps the graph even when nothing is matched, so the sums are 0 with a grad_fn
        src_boxes = pred_boxes[batch_idx, query_idx]  # (M, 4)
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum() / num_boxes
        giou = torch.diag(
            generalized_box_iou(
                box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
            )
        )
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    @staticmethod
    @torch.no_grad()
    def class_error(
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
    ) -> Tensor:
        """100 - top-1 accuracy (%) of matched queries; 0 when nothing is matched. For logging."""
        logits = outputs["pred_logits"]
        batch_idx, query_idx, tgt_labels, _ = _gather_matched(indices, targets, logits)
        if query_idx.numel() == 0:
            return torch.zeros((), device=logits.device)
        correct = logits[batch_idx, query_idx].argmax(-1) == tgt_labels
        return 100.0 - 100.0 * correct.float().mean()

    def forward(
        self,
        outputs: Mapping[str, object],
        targets: Sequence[Mapping[str, Tensor]],
        num_boxes: float | Tensor,
    ) -> dict[str, Tensor]:
        """Compute all losses.

        Args:
            outputs: ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) normalised (cx, cy, w, h),
                optional ``aux_outputs`` (list of dicts with the same two keys, one per earlier
                decoder layer, in order).
            targets: list of B dicts with ``labels`` int64 (N_i,) in [0, K) and ``boxes`` (N_i, 4)
                normalised (cx, cy, w, h).
            num_boxes: box-count normaliser (averaged over workers, >= 1), e.g. from
                :func:`num_boxes_for`.

        Returns:
            dict of 0-dim tensors: ``loss_ce``, ``loss_bbox``, ``loss_giou`` (last layer),
            ``loss_ce_i`` ... for aux layer i, and ``class_error`` (detached, not weighted).
        """
        batch, _, num_classes = validate_outputs(outputs)
        if num_classes != self.num_classes:
            raise ValueError(
                f"pred_logits has K = {num_classes} class logits, "
                f"criterion expects num_classes = {self.num_classes}"
            )
        validate_targets(targets, batch, num_classes)
        norm = self._normaliser(num_boxes, outputs["pred_logits"])

        # Validated once here for the batch; the matcher skips its checks for every layer.
        indices = self.matcher(outputs, targets, check=False)
        losses = self.layer_losses(outputs, targets, norm, indices)
        losses["class_error"] = self.class_error(outputs, targets, indices)

        aux_outputs = outputs.get("aux_outputs") or []
        for i, aux in enumerate(aux_outputs):
            aux_batch, _, aux_classes = validate_outputs(aux)
            if (aux_batch, aux_classes) != (batch, num_classes):
                raise ValueError(
                    f"aux_outputs[{i}] has (B, K) = {(aux_batch, aux_classes)}, "
                    f"last layer has {(batch, num_classes)}"
                )
            aux_indices = self.matcher(aux, targets, check=False)
            for key, value in self.layer_losses(aux, targets, norm, aux_indices).items():
                losses[f"{key}_{i}"] = value
        return losses

    def weight_for(self, key: str) -> float | None:
        """Weight of loss ``key`` (``loss_ce``, ``loss_giou_3``, ...); ``None`` for other keys."""
        match = _LOSS_KEY.match(key)
        if match is None:
            return None
        return self.weight_dict.get(key, self.weight_dict[match.group(1)])

    def weighted_total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Weighted sum of the losses of all layers; keys without a weight (``class_error``) are
        skipped."""
        terms = [losses[k] * w for k in losses if (w := self.weight_for(k)) is not None]
        if not terms:
            raise ValueError(f"no loss keys found in {sorted(losses)}; expected e.g. {_BASE_KEYS}")
        return torch.stack(terms).sum()
