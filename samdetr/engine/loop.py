"""One epoch of training and one pass of inference, independent of how batches are produced.

Batches are ``(images (B, 3, H, W), mask (B, H, W), targets)`` as
:func:`samdetr.data.loader.collate` and the Ray Data collate give them; targets hold normalised
cxcywh ``boxes``, ``labels``, ``image_id`` and ``orig_size`` (h, w). Distributed concerns enter
as callables (``world_reduce``), so the same code runs in a plain loop, under DDP, and in Ray
Train. Seeding and RNG state are in :mod:`samdetr.engine.reproducibility`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from samdetr.engine.step import Batch, StepOptions, autocast_context, optimizer_step
from samdetr.model.criterion import SetCriterion
from samdetr.model.postprocess import PostProcess

#: Loss terms shown per step (last decoder layer) besides the weighted total ``loss``.
LOGGED_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "class_error")


@dataclass
class _Tally:
    """This worker's running sums over an epoch, and the last step not yet reported."""

    sums: Tensor
    steps: int = 0
    skipped: int = 0
    own_steps: int = 0
    own_batches: int = 0
    images: int = 0
    last: dict[str, Tensor] | None = None

    def add(self, batches: list[Batch], total: Tensor, losses: Mapping[str, Tensor],
            grad_norm: Tensor, rates: dict[str, float]) -> None:
        self.own_steps += 1
        self.own_batches += len(batches)
        self.images += sum(images.shape[0] for images, _, _ in batches)
        values = torch.stack([total.detach()] + [losses[k].detach() for k in LOGGED_TERMS])
        self.sums += values.double()
        self.last = {"values": values, "grad_norm": grad_norm.detach(), "rates": rates}

    def means(self) -> dict[str, float]:
        means = (self.sums / max(self.own_steps, 1)).tolist()
        return dict(zip(("loss", *LOGGED_TERMS), means, strict=True))


def train_one_epoch(
    model: nn.Module,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    device: torch.device,
    options: StepOptions | None = None,
) -> dict[str, float]:
    """Train over ``batches`` once, each step as ``options`` (:class:`StepOptions`) say.

    Returns:
        ``loss`` and :data:`LOGGED_TERMS` averaged over this worker's steps (a step's loss is
        that of all its batches, as of one larger batch), plus ``steps`` (optimizer steps, the
        same on every worker), ``skipped_steps`` (of those, the ones the ``grad_scaler``
        skipped), ``batches`` and ``images`` (this worker's own), ``seconds``, ``data_wait_s``
        (the time spent blocked on ``batches``) and ``first_batch_s`` (of that, the wait for
        the first step's batches: the input pipeline's start).
        The step reads one value back from the device per step (under ``world_reduce``) or per
        ``log_every`` steps, so the device is at most that far ahead: ``data_wait_s`` bounds
        from above the time the device sat idle for want of data.

    Raises:
        FloatingPointError: when the loss becomes NaN or infinite (training cannot recover).
    """
    options = options or StepOptions()
    model.train()
    criterion.train()
    tally = _Tally(torch.zeros(len(LOGGED_TERMS) + 1, dtype=torch.float64, device=device))
    start = time.perf_counter()
    waited, first_wait = 0.0, None
    source = iter(batches)
    while True:
        asked = time.perf_counter()
        group = list(itertools.islice(source, options.accumulate))
        waited += time.perf_counter() - asked
        if first_wait is None:
            first_wait = waited
        num_boxes, slots = _agree(group, options.accumulate, device, options.world_reduce)
        if slots == 0:
            break
        # Workers with fewer batches than another this step fill up with stand-ins.
        step = optimizer_step(model, criterion, optimizer,
                              group + [None] * (slots - len(group)), num_boxes, options)
        tally.steps += 1
        tally.skipped += step.skipped
        if group:
            tally.add(group, step.total, step.losses, step.grad_norm, _rates(optimizer))
        if options.after_step is not None:
            options.after_step()
        if tally.steps % options.log_every == 0 and tally.last is not None:
            _report(tally.steps, tally.last, options.on_step)
            tally.last = None
    if tally.last is not None:
        _report(tally.steps, tally.last, options.on_step)
    return {
        **tally.means(), "steps": tally.steps, "skipped_steps": tally.skipped,
        "batches": tally.own_batches,
        "images": tally.images, "seconds": time.perf_counter() - start, "data_wait_s": waited,
        "first_batch_s": first_wait or 0.0,
    }


def _agree(
    group: list[Batch], accumulate: int, device: torch.device,
    world_reduce: Callable[[Tensor], Tensor] | None,
) -> tuple[Tensor, int]:
    """The step's box-count normaliser (the boxes of all its batches, averaged over workers and
    clamped to >= 1, see :func:`samdetr.model.criterion.num_boxes_for`) and how many batches it
    takes (the most any worker has; 0: every worker is done), in one collective."""
    count = sum(int(t["labels"].shape[0]) for _, _, targets in group for t in targets)
    # [boxes, has a 1st batch, has a 2nd, ...]: a slot is taken when any worker has it.
    local = torch.tensor([float(count)] + [float(i < len(group)) for i in range(accumulate)],
                         device=device)
    reduced = local if world_reduce is None else world_reduce(local)
    if not isinstance(reduced, Tensor) or reduced.shape != local.shape:
        raise TypeError("world_reduce must return a tensor shaped like its input")
    return reduced[0].clamp(min=1.0), int((reduced[1:] > 0).sum().item())


def _rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The rate of the first parameter group (``lr``) and of the backbone's, if it has one."""
    groups = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
    rates = {"lr": float(optimizer.param_groups[0]["lr"])}
    if "backbone" in groups:
        rates["lr_backbone"] = float(groups["backbone"])
    return rates


def _report(
    step: int,
    last: Mapping[str, Any],
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> None:
    values = dict(zip(("loss", *LOGGED_TERMS), last["values"].tolist(), strict=True))
    if not math.isfinite(values["loss"]):
        raise FloatingPointError(
            f"loss is {values['loss']} at step {step} ({values}); lower the learning rate or "
            "check the data"
        )
    if on_step is None:
        return
    values.update(last["rates"])
    values["grad_norm"] = float(last["grad_norm"])
    on_step(step, values)


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device,
    postprocess: PostProcess | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[dict[str, Any]]:
    """Detections for every image in ``batches``, in the format of
    :func:`samdetr.engine.coco_eval.evaluate_detections`: ``image_id``, ``scores`` (k,), ``labels``
    (k,), ``boxes`` (k, 4) absolute xyxy pixels of the original image — as numpy arrays, so the
    list pickles cheaply between workers."""
    postprocess = postprocess or PostProcess()
    model.eval()
    detections = []
    for images, mask, targets in batches:
        with autocast_context(device, autocast_dtype):
            outputs = model(images.to(device), mask.to(device))
        outputs = {
            "pred_logits": outputs["pred_logits"].float(),
            "pred_boxes": outputs["pred_boxes"].float(),
        }
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        for target, result in zip(targets, postprocess(outputs, sizes), strict=True):
            detections.append(
                {
                    "image_id": int(target["image_id"]),
                    **{k: result[k].cpu().numpy() for k in ("scores", "labels", "boxes")},
                }
            )
    return detections
