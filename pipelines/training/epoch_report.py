"""What an epoch of a training run reports: its metrics over all workers (logged, kept in the
history and the checkpoint) and rank 0's console line."""

from __future__ import annotations

from typing import Any

from samdetr.engine.coco_eval import METRIC_NAMES


def combined_metrics(metrics: dict[str, float], all_stats: list[dict[str, Any]],
                     seconds: float, scaled: bool = False) -> dict[str, float]:
    """COCO metrics plus the epoch's loss and speed over all workers.

    ``first_batch_s``: the longest wait of a worker for its first batch (the input pipeline's
    start, every epoch). ``data_wait_share``: after that first batch, the largest share of a
    worker's training time spent waiting for its next batch (the slowest-fed worker holds the
    others up at every all-reduce). On GPUs, ``gpu_mem_peak_gib``: the largest peak of memory
    allocated by one worker in the epoch. With loss ``scaled`` (fp16), ``skipped_steps``: the
    steps whose gradients overflowed (the same on every worker)."""
    images = sum(s["images"] for s in all_stats)
    weighted = sum(s["loss"] * s["batches"] for s in all_stats)
    out = {
        **{k: metrics[k] for k in METRIC_NAMES},
        "loss": weighted / max(1, sum(s["batches"] for s in all_stats)),
        "images_per_s": images / max(s["seconds"] for s in all_stats),
        "epoch_time_s": seconds,
        "first_batch_s": max(s["first_batch_s"] for s in all_stats),
        "data_wait_share": max(steady_wait_share(s) for s in all_stats),
    }
    peaks = [s["gpu_mem_peak_gib"] for s in all_stats if "gpu_mem_peak_gib" in s]
    if peaks:
        out["gpu_mem_peak_gib"] = max(peaks)
    if scaled:
        out["skipped_steps"] = float(max(s["skipped_steps"] for s in all_stats))
    return out


def steady_wait_share(stats: dict[str, Any]) -> float:
    """The share of a worker's epoch after its first batch spent waiting for batches."""
    after_first = stats["seconds"] - stats["first_batch_s"]
    return (stats["data_wait_s"] - stats["first_batch_s"]) / after_first if after_first > 0 else 0.0


def epoch_line(epoch: int, epochs: int, metrics: dict[str, float],
                history: list[dict[str, Any]]) -> str:
    """Rank 0's summary of an epoch, with the best AP so far (``history`` includes this
    epoch, and on a resume the epochs before it)."""
    # Ties go to the later epoch, as Ray Train's checkpoint ranking (and so the run's summary
    # and its registered model) breaks them.
    best = max(history, key=lambda entry: (entry["AP"], entry["epoch"]))
    return (
        f"epoch {epoch + 1}/{epochs}: loss {metrics['loss']:.3f} AP {metrics['AP']:.4f} "
        f"AP50 {metrics['AP50']:.4f} (best AP {best['AP']:.4f}, epoch {best['epoch'] + 1}) "
        f"{metrics['images_per_s']:.1f} img/s (first batch after {metrics['first_batch_s']:.1f}s,"
        f" then {metrics['data_wait_share']:.0%} waiting for data) "
        f"{metrics['epoch_time_s']:.0f}s"
    )
