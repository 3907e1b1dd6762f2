"""An exponential moving average (EMA) of a model's weights, updated after every optimizer step.

The average often scores better than the last weights and moves less from epoch to epoch. It is
kept by ``torch.optim.swa_utils.AveragedModel`` (a copy of the model): the first update copies
the weights, the ``n``-th (``n >= 2``) keeps :meth:`ModelEma.decay_at` ``(n)`` of the average::

    ema_n = d_n * ema_(n-1) + (1 - d_n) * weights_n,   d_n = decay * (1 - exp(-n / warmup_steps))

The warm-up (``warmup_steps``; 0: none) lets the early average follow the fast-moving weights
instead of holding on to the random start. Buffers (the frozen batch norms' statistics) are
copied, not averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from samdetr.model.detector import unwrap_model


@dataclass(frozen=True)
class EmaConfig:
    """``decay``: the share of the average kept at each update once warmed up (0: no EMA; the
    DETR-family and YOLO recipes that use one take 0.9997-0.9999); ``warmup_steps``: the
    updates over which the decay rises to it (0: from the first)."""

    decay: float = 0.0
    warmup_steps: int = 2000

    def __post_init__(self) -> None:
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) \
                or not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1) (0: off), got {self.decay!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) \
                or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")

    # Error messages start with the field's name, so that a caller can prefix its own.

    @property
    def enabled(self) -> bool:
        return self.decay > 0


class ModelEma:
    """The moving average of ``model``'s weights (a copy of it, on its device), as
    :class:`EmaConfig` says. :meth:`update` after each optimizer step; :attr:`module` is the
    averaged model, to evaluate or save."""

    def __init__(self, model: nn.Module, config: EmaConfig) -> None:
        if not config.enabled:
            raise ValueError("ModelEma needs a decay > 0 (EmaConfig.decay)")
        self.config = config
        self.updates = 0  # counted here: reading AveragedModel's tensor would sync the GPU
        self._averaged = AveragedModel(unwrap_model(model), multi_avg_fn=self._average)
        self._averaged.requires_grad_(False)
        self._averaged.eval()

    @property
    def module(self) -> nn.Module:
        return self._averaged.module

    def decay_at(self, update: int) -> float:
        """The share of the average kept by the ``update``-th update (counted from 1)."""
        if update <= 1:
            return 0.0  # the first update copies
        warm = 1.0 if self.config.warmup_steps == 0 else \
            1.0 - math.exp(-update / self.config.warmup_steps)
        return self.config.decay * warm

    def _average(self, averaged: list[Tensor], current: list[Tensor], count: Any) -> None:
        # torch's fixed-decay EMA step, with this update's decay (a float: no GPU sync).
        get_ema_multi_avg_fn(self.decay_at(self.updates + 1))(averaged, current, count)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average."""
        self._averaged.update_parameters(unwrap_model(model))
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The average's weights and how many updates made it (weights-only loadable)."""
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (a resumed run's average)."""
        if not isinstance(state, dict) or set(state) != {"model", "updates"}:
            raise ValueError("an EMA state is {'model': state dict, 'updates': int}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state)}")
        self.module.load_state_dict(state["model"], strict=True)
        self.updates = int(state["updates"])
        self._averaged.n_averaged.fill_(self.updates)
