"""An epoch's numbers over the workers: speed from the slowest, waits from the worst-fed, and
with fp16's loss scaling the steps skipped."""

from __future__ import annotations

import pytest

from pipelines.training.epoch_report import combined_metrics
from samdetr.engine.coco_eval import METRIC_NAMES


def _stats(images: int, seconds: float, first: float, waited: float, skipped: int = 0) -> dict:
    return {"images": images, "loss": 2.0, "batches": 2, "seconds": seconds,
            "first_batch_s": first, "data_wait_s": waited, "steps": 3, "skipped_steps": skipped}


def test_combined_metrics_take_the_slowest_worker_and_count_skipped_steps_when_scaled():
    coco = {name: 0.5 for name in METRIC_NAMES}
    stats = [_stats(6, 3.0, 1.0, 1.5, skipped=1), _stats(4, 2.0, 0.5, 0.5, skipped=1)]
    out = combined_metrics(coco, stats, seconds=4.0)
    assert out["images_per_s"] == pytest.approx(10 / 3.0)
    assert out["first_batch_s"] == 1.0
    assert out["data_wait_share"] == pytest.approx(0.25)  # (1.5 - 1.0) / (3.0 - 1.0)
    assert "skipped_steps" not in out  # only a loss-scaled (fp16) run has them
    assert combined_metrics(coco, stats, seconds=4.0, scaled=True)["skipped_steps"] == 1.0
