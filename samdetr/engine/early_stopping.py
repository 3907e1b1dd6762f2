"""When a run has stopped improving: the epochs since a validation metric last improved.

    stale = stale_epochs([h["AP"] for h in history], min_delta=0.001)
    if patience and stale >= patience: ...  # stop

A value counts as an improvement when it beats the best so far (higher is better) by more
than ``min_delta``; the best moves only then, so a drift of small gains counts once they add
up to more than ``min_delta``, not at each gain. The answer depends on the history alone, so a
resumed run decides as an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def stale_epochs(values: Sequence[float], min_delta: float = 0.0) -> int:
    """Epochs after the last improvement of ``values`` (one per epoch, higher is better); 0
    when the last epoch improved (the first always does). NaN never improves."""
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not (
            math.isfinite(min_delta) and min_delta >= 0):
        raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
    best, since = -math.inf, 0
    for value in values:
        if value > best + min_delta:  # False for NaN
            best, since = value, 0
        else:
            since += 1
    return since


def stop_reason(history: Sequence[Mapping[str, Any]], metric: str, patience: int,
                min_delta: float = 0.0) -> str:
    """Why a run whose epochs so far are ``history`` (entries with ``epoch`` and ``metric``)
    should stop, ``patience`` epochs without an improvement of ``metric`` by more than
    ``min_delta`` (0 patience: never); "" to go on."""
    if not patience or stale_epochs([entry[metric] for entry in history], min_delta) < patience:
        return ""
    best = max(history, key=lambda entry: (entry[metric], entry["epoch"]))
    return (f"{metric} has not improved by more than {min_delta} for {patience} epoch(s) "
            f"(best {best[metric]:.4f}, epoch {best['epoch'] + 1})")
