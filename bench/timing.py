"""Timing one call of a kernel benchmark (imported by bench/roi_align.py and
bench/deformable_attention.py from the scripts' own folder)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call; on CUDA the
    device is synchronised before and after each call, so queued work is counted."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
