"""One optimizer step, over one batch or several accumulated ones, and the options that shape it.

A step of ``k`` accumulated batches gives the update of one batch ``k`` times as large: every
batch's loss is divided by the box count of all ``k`` (over all workers), so the summed gradients
are those of the large batch's loss; DDP all-reduces the gradients once, on the last batch
(``no_sync`` on the others). Batches of another size than the rest, or of other image sizes
(padded differently), make the two differ as batch composition always does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from samdetr.engine.ema import ModelEma
from samdetr.model.criterion import SetCriterion

Batch = tuple[Tensor, Tensor, list[dict[str, Tensor]]]


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` (e.g. bfloat16 on GPU), or nothing when ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class StepOptions:
    """How :func:`samdetr.engine.loop.train_one_epoch` takes its steps.

    ``clip_max_norm``: gradient-norm clipping (0: off; the official recipe uses 0.1).
    ``autocast_dtype``: e.g. ``torch.bfloat16`` on GPU; ``None`` computes in float32.
    ``world_reduce``: for data-parallel training, the mean of a tensor over all workers (e.g.
    :func:`samdetr.model.criterion.distributed_mean`); ``None`` for one process. Every step, one
    call averages the box-count normaliser and tells how many batches any worker still has.
    Workers may hold different numbers of batches: one that has run out takes zero-weight steps
    on a stand-in batch until all have, so DDP's gradient all-reduce stays in step and the
    gradients are exactly those of the workers with data.
    ``on_step``: called every ``log_every`` steps (and after the last) as ``on_step(step,
    values)`` with ``step`` counted from 1 in this epoch and ``values`` the weighted ``loss``,
    :data:`samdetr.engine.loop.LOGGED_TERMS`, ``lr`` (first group), ``lr_backbone`` and
    ``grad_norm`` of that step. Reading values syncs the GPU, so it is done only then; ``lr`` is
    the rate the step took.
    ``after_step``: called after every optimizer step (e.g. a schedule's ``step_batch``).
    ``grad_scaler``: a ``torch.amp.GradScaler`` for float16 autocast: the loss is scaled before
    the backward pass and the gradients unscaled before clipping, and a step whose gradients
    hold an inf or NaN is skipped (weights and optimizer state untouched; the scale drops).
    Skipped steps still count as steps (every worker skips the same ones: the gradients are
    all-reduced), so ``after_step`` runs for them too.
    ``accumulate``: batches per optimizer step (gradient accumulation); an epoch's last step
    takes the batches that are left.
    ``ema``: a :class:`samdetr.engine.ema.ModelEma` updated after every step taken (not after
    one the grad scaler skipped).
    """

    clip_max_norm: float = 0.1
    autocast_dtype: torch.dtype | None = None
    world_reduce: Callable[[Tensor], Tensor] | None = None
    on_step: Callable[[int, dict[str, float]], None] | None = None
    log_every: int = 10
    after_step: Callable[[], None] | None = None
    grad_scaler: torch.amp.GradScaler | None = None
    accumulate: int = 1
    ema: ModelEma | None = None

    def __post_init__(self) -> None:
        for name in ("log_every", "accumulate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.clip_max_norm, (int, float)) or not self.clip_max_norm >= 0:
            raise ValueError(f"clip_max_norm must be a number >= 0, got {self.clip_max_norm!r}")


@dataclass
class StepResult:
    """What a step gives back: the weighted loss and the loss terms of this worker's own
    batches (``None`` when it had none: stand-ins only), the gradient norm before clipping,
    and whether the grad scaler skipped the step."""

    total: Tensor | None
    losses: dict[str, Tensor] | None
    grad_norm: Tensor
    skipped: bool


def standin_batch(device: torch.device) -> Batch:
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


def _to_device(targets: list[dict[str, Tensor]], device: torch.device) -> list[dict[str, Tensor]]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


def _no_sync(model: nn.Module, inner: bool):
    """DDP's ``no_sync`` for the inner batches of an accumulated step (their gradients are
    all-reduced with the last one's), nothing otherwise."""
    if inner and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def optimizer_step(
    model: nn.Module,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch | None],
    num_boxes: Tensor,
    options: StepOptions,
) -> StepResult:
    """One optimizer step over ``batches`` (``None``: a stand-in, weighted 0), each loss divided
    by ``num_boxes``, the box count of them all (averaged over workers, >= 1)."""
    device, scaler = num_boxes.device, options.grad_scaler
    optimizer.zero_grad(set_to_none=True)
    total, losses, own = None, None, 0
    for i, batch in enumerate(batches):
        images, mask, targets = batch if batch is not None else standin_batch(device)
        with _no_sync(model, inner=i < len(batches) - 1):
            with autocast_context(device, options.autocast_dtype):
                outputs = model(images.to(device, non_blocking=True),
                                mask.to(device, non_blocking=True))
            # The criterion computes in float32 whatever the autocast dtype of the outputs.
            terms = criterion(outputs, _to_device(targets, device), num_boxes)
            weighted = criterion.weighted_total(terms)
            # A stand-in contributes zero gradients but takes part in DDP's all-reduce.
            loss = weighted if batch is not None else weighted * 0.0
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if batch is not None:
            own += 1
            total, losses = _summed(total, losses, weighted, terms)
    if losses is not None and "class_error" in losses:
        losses["class_error"] = losses["class_error"] / own  # a percentage: the mean
    if scaler is not None:  # clipping must see the true gradients
        scaler.unscale_(optimizer)
    if options.clip_max_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip_max_norm)
    else:
        grad_norm = torch.zeros((), device=device)
    if scaler is None:
        optimizer.step()
        skipped = False
    else:
        scale = scaler.get_scale()
        scaler.step(optimizer)  # not taken when a gradient is inf or NaN
        scaler.update()  # which then lowers the scale: the one sign of a skipped step
        skipped = scaler.get_scale() < scale
    if options.ema is not None and not skipped:
        options.ema.update(model)
    return StepResult(total, losses, grad_norm, skipped)


def _summed(total: Tensor | None, losses: dict[str, Tensor] | None, weighted: Tensor,
            terms: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Running sums of the weighted loss and the terms (detached: only for reporting)."""
    terms = {k: v.detach() for k, v in terms.items()}
    if total is None:
        return weighted.detach(), terms
    return total + weighted.detach(), {k: losses[k] + v for k, v in terms.items()}
