"""The official optimisation recipe: AdamW with a smaller backbone learning rate, step decay
(or a cosine decay, each after an optional linear warm-up: :mod:`samdetr.engine.lr_schedule`).

    optimizer = build_optimizer(model, OptimConfig())
    scheduler = build_scheduler(optimizer, OptimConfig(), epochs=50)
    # scheduler.step_batch() after each optimizer step, scheduler.step() after each epoch
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from samdetr.config import known_fields
from samdetr.engine.lr_schedule import LrSchedule, ScheduleSpec, check_schedule_name
from samdetr.engine.parameter_groups import (
    check_part_names,
    match_length,
    parts_parameters,
    plain_name,
)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings of the official runs (lr 1e-4, backbone 1e-5, wd 1e-4, clip 0.1).

    ``lr_drop_epochs``: the learning rates are multiplied by ``lr_gamma`` after each of these
    epochs (official: ``[10]`` for 12-epoch runs, ``[40]`` for 50-epoch runs).
    ``schedule``: ``step`` (that drop) or ``cosine`` (from the rates down to ``min_lr_ratio``
    × them over the run's epochs, moving once per epoch). ``warmup_steps``: optimizer steps of
    linear warm-up from ``warmup_start`` × the rates before either (0: none, as official).
    ``clip_max_norm``: gradient-norm clipping; 0 turns it off.
    ``freeze``: parts left untrained (:mod:`samdetr.engine.parameter_groups`: ``backbone``,
    ``encoder``, ... or parameter-name prefixes). ``lr_groups``: ``{part: lr}`` for parts that
    train at their own rate; a parameter in several takes the most specific (longest prefix),
    and the backbone keeps ``lr_backbone`` unless a group names it.
    """

    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_drop_epochs: tuple[int, ...] = (40,)
    lr_gamma: float = 0.1
    schedule: str = "step"
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    warmup_start: float = 0.001
    clip_max_norm: float = 0.1
    freeze: tuple[str, ...] = ()
    lr_groups: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so the config stays hashable and frozen.
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "lr_drop_epochs", tuple(self.lr_drop_epochs))
        object.__setattr__(self, "freeze", check_part_names(self.freeze, "optim.freeze"))
        self._check_lr_groups()
        for name in ("lr", "lr_backbone", "weight_decay", "lr_gamma", "clip_max_norm"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"optim.{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        drops = self.lr_drop_epochs
        if any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in drops):
            raise ValueError(f"optim.lr_drop_epochs must be positive integers, got {list(drops)}")
        if list(drops) != sorted(set(drops)):
            raise ValueError(f"optim.lr_drop_epochs must be increasing, got {list(drops)}")
        self._check_schedule()

    def _check_schedule(self) -> None:
        check_schedule_name(self.schedule)
        steps = self.warmup_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"optim.warmup_steps must be an integer >= 0, got {steps!r}")
        for name, low_open in (("warmup_start", True), ("min_lr_ratio", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    (0 < value if low_open else 0 <= value) and value <= 1):
                bounds = "(0, 1]" if low_open else "[0, 1]"
                raise ValueError(f"optim.{name} must be in {bounds}, got {value!r}")

    def _check_lr_groups(self) -> None:
        groups = self.lr_groups
        if not isinstance(groups, dict):
            raise ValueError(f"optim.lr_groups must map parts to learning rates, got {groups!r}")
        check_part_names(groups, "optim.lr_groups")
        for part, lr in groups.items():
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (
                    math.isfinite(lr) and lr > 0):
                raise ValueError(f"optim.lr_groups.{part} must be a learning rate > 0, "
                                 f"got {lr!r}")
        both = sorted(set(groups) & set(self.freeze))
        if both:
            raise ValueError(f"optim: {both} both frozen (optim.freeze) and given a learning "
                             "rate (optim.lr_groups); keep one")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"], out["lr_drop_epochs"] = list(self.betas), list(self.lr_drop_epochs)
        out["freeze"], out["lr_groups"] = list(self.freeze), dict(self.lr_groups)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimConfig:
        return cls(**known_fields(cls, data, "optim"))


def parameter_groups(model: nn.Module, lr: float, lr_backbone: float,
                     lr_groups: dict[str, float] | None = None,
                     freeze: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Trainable parameters in groups, each with its lr: one per entry of ``lr_groups`` (named
    after the part), the backbone (``backbone.``, ``module.backbone.`` under DDP) and the rest
    (``transformer``). A parameter in several ``lr_groups`` parts joins the most specific.
    Frozen parameters (``requires_grad`` off, or in ``freeze``) are left out, and an empty
    group is not created.
    """
    lr_groups = dict(lr_groups or {})
    frozen = {name for name, _ in parts_parameters(model, freeze)}
    named = [(name, param) for name, param in model.named_parameters()
             if param.requires_grad and name not in frozen]
    if lr_groups:
        list(parts_parameters(model, lr_groups))  # a part that names nothing is an error
    members: dict[str, list[nn.Parameter]] = {part: [] for part in lr_groups}
    backbone, rest = [], []
    for name, param in named:
        best = max(lr_groups, key=lambda part: match_length(name, part), default=None)
        if best is not None and match_length(name, best):
            members[best].append(param)
        elif plain_name(name).startswith("backbone."):
            backbone.append(param)
        else:
            rest.append(param)
    if not named:
        raise ValueError("the model has no trainable parameters (all frozen)")
    groups = [{"params": rest, "lr": lr, "name": "transformer"}]
    if backbone:
        groups.append({"params": backbone, "lr": lr_backbone, "name": "backbone"})
    groups += [{"params": params, "lr": lr_groups[part], "name": part}
               for part, params in members.items() if params]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` of ``model`` (``config.freeze`` left out: call
    :func:`samdetr.engine.parameter_groups.freeze_parameters` first so no gradient is made)."""
    groups = parameter_groups(model, config.lr, config.lr_backbone, config.lr_groups,
                              config.freeze)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas,
                             weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig,
                    epochs: int | None = None) -> LrSchedule:
    """``config``'s schedule over the optimizer's rates for a run of ``epochs`` (needed by
    ``cosine``); call ``step_batch()`` after each optimizer step and ``step()`` per epoch."""
    return LrSchedule(optimizer, ScheduleSpec.of(config, epochs))
