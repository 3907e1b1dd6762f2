"""Timing one call of a kernel benchmark (imported by bench/roi_align.py and
bench/deformable_attention.py), and the commit a benchmark's figures are of."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

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


def git_commit() -> str:
    """The short hash of the checkout the benchmark runs from ("unknown" outside git)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent)
    return done.stdout.strip() or "unknown"
