"""The official optimisation recipe: AdamW with a smaller backbone learning rate, step decay.

    optimizer = build_optimizer(model, OptimConfig())
    scheduler = build_scheduler(optimizer, OptimConfig())   # stepped once per epoch
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from samdetr.config import known_fields


@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings of the official runs (lr 1e-4, backbone 1e-5, wd 1e-4, clip 0.1).

    ``lr_drop_epochs``: the learning rates are multiplied by ``lr_gamma`` after each of these
    epochs (official: ``[10]`` for 12-epoch runs, ``[40]`` for 50-epoch runs).
    ``clip_max_norm``: gradient-norm clipping; 0 turns it off.
    """

    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_drop_epochs: tuple[int, ...] = (40,)
    lr_gamma: float = 0.1
    clip_max_norm: float = 0.1

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so the config stays hashable and frozen.
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "lr_drop_epochs", tuple(self.lr_drop_epochs))
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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"], out["lr_drop_epochs"] = list(self.betas), list(self.lr_drop_epochs)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimConfig:
        return cls(**known_fields(cls, data, "optim"))


def parameter_groups(model: nn.Module, lr: float, lr_backbone: float) -> list[dict[str, Any]]:
    """Trainable parameters split into the backbone group and the rest (each with its lr).

    The backbone is recognised by the parameter name prefix ``backbone.`` (``module.backbone.``
    under DDP). Frozen parameters are left out, and an empty group is not created.
    """
    backbone, rest = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = name.removeprefix("module.").removeprefix("_orig_mod.")
        (backbone if plain.startswith("backbone.") else rest).append(param)
    groups = [{"params": rest, "lr": lr, "name": "transformer"}]
    if backbone:
        groups.append({"params": backbone, "lr": lr_backbone, "name": "backbone"})
    if not rest:
        raise ValueError("the model has no trainable parameters outside the backbone")
    return groups


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` of ``model``."""
    groups = parameter_groups(model, config.lr, config.lr_backbone)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas,
                             weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig
) -> torch.optim.lr_scheduler.MultiStepLR:
    """Step decay by ``lr_gamma`` at ``lr_drop_epochs``; call ``scheduler.step()`` per epoch."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.lr_drop_epochs), gamma=config.lr_gamma
    )
