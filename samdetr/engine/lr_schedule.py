"""Learning-rate schedules: the official step drop, or a cosine decay, each optionally after a
linear warm-up, as one closed form of (epochs done, optimizer steps done).

    schedule = LrSchedule(optimizer, ScheduleSpec.of(config, epochs=50))
    for epoch in ...:
        for batch in ...:
            ...; optimizer.step(); schedule.step_batch()   # warm-up moves per step
        schedule.step()                                    # the decay moves per epoch

Every group's learning rate is its own base rate (what the optimizer was built with) times
:meth:`ScheduleSpec.factor`. Because the factor is a function of the two counters alone, a
run resumed from :meth:`LrSchedule.state_dict` continues exactly where it stopped, whatever
the number of workers or batches in between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: ``step``: ×``gamma`` after each epoch in ``drop_epochs`` (the official recipe's drop, and
#: any multi-step drop); ``cosine``: from 1 to ``min_ratio`` over ``epochs`` (half a cosine).
SCHEDULES = ("step", "cosine")


def check_schedule_name(name: str) -> None:
    """``name`` is one of :data:`SCHEDULES` (ValueError naming ``optim.schedule`` if not)."""
    if name not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {list(SCHEDULES)}, got {name!r}")


@dataclass(frozen=True)
class ScheduleSpec:
    """The schedule's closed form.

    ``name``: one of :data:`SCHEDULES`. ``drop_epochs`` and ``gamma``: the step drop.
    ``epochs``: the run's length, needed by ``cosine`` (None otherwise). ``min_ratio``: the
    cosine's last factor. ``warmup_steps``: optimizer steps of linear warm-up from
    ``warmup_start`` × the rate to the rate (0: none)."""

    name: str = "step"
    drop_epochs: tuple[int, ...] = ()
    gamma: float = 0.1
    epochs: int | None = None
    min_ratio: float = 0.0
    warmup_steps: int = 0
    warmup_start: float = 0.001

    def __post_init__(self) -> None:
        check_schedule_name(self.name)
        if self.name == "cosine" and (isinstance(self.epochs, bool)
                                      or not isinstance(self.epochs, int) or self.epochs < 1):
            raise ValueError(f"a cosine schedule needs the run's epochs (an integer >= 1), got "
                             f"{self.epochs!r}")

    @classmethod
    def of(cls, config: Any, epochs: int | None = None) -> ScheduleSpec:
        """The spec of an :class:`samdetr.engine.optim.OptimConfig` for a run of ``epochs``."""
        return cls(config.schedule, tuple(config.lr_drop_epochs), config.lr_gamma, epochs,
                   config.min_lr_ratio, config.warmup_steps, config.warmup_start)

    def factor(self, epoch: int, steps: int) -> float:
        """The multiplier of every base rate after ``epoch`` epochs and ``steps`` optimizer
        steps (both counted from 0 at the run's start)."""
        if self.name == "step":
            decay = self.gamma ** sum(1 for drop in self.drop_epochs if epoch >= drop)
        else:
            progress = min(epoch, self.epochs) / self.epochs
            decay = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.warmup_steps > 0 and steps < self.warmup_steps:
            decay *= self.warmup_start + (1 - self.warmup_start) * steps / self.warmup_steps
        return decay


class LrSchedule:
    """Sets each parameter group's ``lr`` to its base rate × ``spec.factor(epoch, steps)``.

    ``step()`` after each epoch, ``step_batch()`` after each optimizer step. The base rates are
    the groups' rates when the schedule is made (kept as ``initial_lr``, as torch's schedulers
    do)."""

    def __init__(self, optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> None:
        self.optimizer = optimizer
        self.spec = spec
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.epoch = 0
        self.steps = 0
        self._apply()

    def step(self) -> None:
        """An epoch is done."""
        self.epoch += 1
        self._apply()

    def step_batch(self) -> None:
        """An optimizer step is done."""
        self.steps += 1
        if self.spec.warmup_steps and self.steps <= self.spec.warmup_steps:
            self._apply()  # past the warm-up the rate moves only per epoch

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def _apply(self) -> None:
        factor = self.spec.factor(self.epoch, self.steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "steps": self.steps, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters (and base rates) of :meth:`state_dict`; also reads the state of
        the ``torch.optim.lr_scheduler.MultiStepLR`` that runs saved before this class (its
        ``last_epoch`` is the epochs done; those runs had no warm-up)."""
        if "epoch" in state:
            self.epoch, self.steps = int(state["epoch"]), int(state["steps"])
        elif "last_epoch" in state:
            self.epoch, self.steps = int(state["last_epoch"]), 0
        else:
            raise ValueError(f"not a learning-rate schedule's state: keys {sorted(state)}")
        self.base_lrs = _same_length(state.get("base_lrs", self.base_lrs), self.base_lrs)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["initial_lr"] = base
        self._apply()


def _same_length(saved: Sequence[float], current: Sequence[float]) -> list[float]:
    if len(saved) != len(current):
        raise ValueError(f"the saved schedule has {len(saved)} parameter groups, the optimizer "
                         f"{len(current)}")
    return [float(x) for x in saved]
