"""One epoch of training and one pass of inference, independent of how batches are produced.

Batches are ``(images (B, 3, H, W), mask (B, H, W), targets)`` as
:func:`samdetr.data.loader.collate` and the Ray Data collate give them; targets hold normalised
cxcywh ``boxes``, ``labels``, ``image_id`` and ``orig_size`` (h, w). Distributed concerns enter
as callables (``world_reduce``), so the same code runs in a plain loop, under DDP, and in Ray
Train. Seeding and RNG state are in :mod:`samdetr.engine.reproducibility`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from samdetr.model.criterion import SetCriterion, num_boxes_for
from samdetr.model.postprocess import PostProcess

Batch = tuple[Tensor, Tensor, list[dict[str, Tensor]]]
#: Loss terms shown per step (last decoder layer) besides the weighted total ``loss``.
LOGGED_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "class_error")


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` (e.g. bfloat16 on GPU), or nothing when ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(targets: list[dict[str, Tensor]], device: torch.device) -> list[dict[str, Tensor]]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


def _standin_batch(device: torch.device) -> Batch:
    """A one-image batch without boxes for a rank that has run out of data (weighted by 0)."""
    images = torch.zeros(1, 3, 128, 128, device=device)
    mask = torch.zeros(1, 128, 128, dtype=torch.bool, device=device)
    target = {
        "boxes": torch.zeros(0, 4, device=device),
        "labels": torch.zeros(0, dtype=torch.int64, device=device),
        "image_id": torch.tensor(-1, device=device),
        "orig_size": torch.tensor([128, 128], device=device),
        "size": torch.tensor([128, 128], device=device),
    }
    return images, mask, [target]


@dataclass(frozen=True)
class StepOptions:
    """How :func:`train_one_epoch` takes its steps.

    ``clip_max_norm``: gradient-norm clipping (0: off; the official recipe uses 0.1).
    ``autocast_dtype``: e.g. ``torch.bfloat16`` on GPU; ``None`` computes in float32.
    ``world_reduce``: for data-parallel training, the mean of a tensor over all workers (e.g.
    :func:`samdetr.model.criterion.distributed_mean`); ``None`` for one process. Every step, one
    call averages the box-count normaliser and tells whether any worker still has a batch.
    Workers may hold different numbers of batches: one that has run out takes zero-weight steps
    on a stand-in batch until all have, so DDP's gradient all-reduce stays in step and the
    gradients are exactly those of the workers with data.
    ``on_step``: called every ``log_every`` steps (and after the last) as ``on_step(step,
    values)`` with ``step`` counted from 1 in this epoch and ``values`` the weighted ``loss``,
    :data:`LOGGED_TERMS`, ``lr`` (first group), ``lr_backbone`` and ``grad_norm`` of that step.
    Reading values syncs the GPU, so it is done only then; ``lr`` is the rate the step took.
    ``after_step``: called after every optimizer step (e.g. a schedule's ``step_batch``).
    ``grad_scaler``: a ``torch.amp.GradScaler`` for float16 autocast: the loss is scaled before
    the backward pass and the gradients unscaled before clipping, and a step whose gradients
    hold an inf or NaN is skipped (weights and optimizer state untouched; the scale drops).
    Skipped steps still count as steps (every worker skips the same ones: the gradients are
    all-reduced), so ``after_step`` runs for them too.
    """

    clip_max_norm: float = 0.1
    autocast_dtype: torch.dtype | None = None
    world_reduce: Callable[[Tensor], Tensor] | None = None
    on_step: Callable[[int, dict[str, float]], None] | None = None
    log_every: int = 10
    after_step: Callable[[], None] | None = None
    grad_scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        if isinstance(self.log_every, bool) or not isinstance(self.log_every, int) \
                or self.log_every < 1:
            raise ValueError(f"log_every must be an integer >= 1, got {self.log_every!r}")
        if not isinstance(self.clip_max_norm, (int, float)) or not self.clip_max_norm >= 0:
            raise ValueError(f"clip_max_norm must be a number >= 0, got {self.clip_max_norm!r}")


@dataclass
class _Tally:
    """This worker's running sums over an epoch, and the last step not yet reported."""

    sums: Tensor
    steps: int = 0
    skipped: int = 0
    own_batches: int = 0
    images: int = 0
    last: dict[str, Tensor] | None = None

    def add(self, images: int, total: Tensor, losses: Mapping[str, Tensor],
            grad_norm: Tensor, rates: dict[str, float]) -> None:
        self.own_batches += 1
        self.images += images
        values = torch.stack([total.detach()] + [losses[k].detach() for k in LOGGED_TERMS])
        self.sums += values.double()
        self.last = {"values": values, "grad_norm": grad_norm.detach(), "rates": rates}

    def means(self) -> dict[str, float]:
        means = (self.sums / max(self.own_batches, 1)).tolist()
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
        ``loss`` and :data:`LOGGED_TERMS` averaged over this worker's batches, plus ``steps``
        (optimizer steps, the same on every worker), ``skipped_steps`` (of those, the ones the
        ``grad_scaler`` skipped), ``batches`` and ``images`` (this worker's
        own), ``seconds``, ``data_wait_s`` (the time spent blocked on ``batches`` for a batch)
        and ``first_batch_s`` (of that, the wait for the first one: the input pipeline's start).
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
        batch = next(source, None)
        waited += time.perf_counter() - asked
        if first_wait is None:
            first_wait = waited
        if options.world_reduce is None:
            if batch is None:
                break
            num_boxes = num_boxes_for(batch[2], device)
        else:
            num_boxes, anyone_has_data = _agree(batch, device, options.world_reduce)
            if not anyone_has_data:
                break
        own = batch is not None
        images, mask, targets = batch if own else _standin_batch(device)
        total, losses, grad_norm, skipped = _step(
            model, criterion, optimizer, (images, mask, targets), num_boxes, own, options,
        )
        tally.steps += 1
        tally.skipped += skipped
        if own:
            tally.add(images.shape[0], total, losses, grad_norm, _rates(optimizer))
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


def _step(
    model: nn.Module,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    num_boxes: Tensor,
    own: bool,
    options: StepOptions,
) -> tuple[Tensor, dict[str, Tensor], Tensor, bool]:
    """One optimizer step; returns the weighted loss, the loss terms, the gradient norm and
    whether the grad scaler skipped the step."""
    device = num_boxes.device
    images, mask, targets = batch
    images = images.to(device, non_blocking=True)
    mask = mask.to(device, non_blocking=True)
    targets = _to_device(targets, device)
    with autocast_context(device, options.autocast_dtype):
        outputs = model(images, mask)
    # The criterion computes in float32 whatever the autocast dtype of the outputs.
    losses = criterion(outputs, targets, num_boxes)
    total = criterion.weighted_total(losses)
    optimizer.zero_grad(set_to_none=True)
    # A stand-in step contributes zero gradients but takes part in DDP's all-reduce.
    loss, scaler = (total if own else total * 0.0), options.grad_scaler
    if scaler is None:
        loss.backward()
    else:  # float16 gradients underflow unscaled; clipping must see the true ones
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if options.clip_max_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip_max_norm)
    else:
        grad_norm = torch.zeros((), device=device)
    if scaler is None:
        optimizer.step()
        return total, losses, grad_norm, False
    scale = scaler.get_scale()
    scaler.step(optimizer)  # not taken when a gradient is inf or NaN
    scaler.update()  # which then lowers the scale: the one sign of a skipped step
    return total, losses, grad_norm, scaler.get_scale() < scale


def _agree(
    batch: Batch | None, device: torch.device, world_reduce: Callable[[Tensor], Tensor]
) -> tuple[Tensor, bool]:
    """One collective per step: the mean box count (clamped to >= 1, see
    :func:`samdetr.model.criterion.num_boxes_for`) and whether any worker still has a batch."""
    count = sum(int(t["labels"].shape[0]) for t in batch[2]) if batch is not None else 0
    local = torch.tensor([float(count), float(batch is not None)], device=device)
    reduced = world_reduce(local)
    if not isinstance(reduced, Tensor) or reduced.shape != local.shape:
        raise TypeError("world_reduce must return a tensor shaped like its input")
    return reduced[0].clamp(min=1.0), bool(reduced[1].item() > 0)


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
