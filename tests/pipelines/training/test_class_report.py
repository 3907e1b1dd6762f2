"""Each class's numbers as a training run logs them every epoch."""

from __future__ import annotations

import pytest

from pipelines.training.class_report import (
    class_figure,
    class_metrics,
    class_rows,
    class_table,
    metric_names,
)
from samdetr.engine.class_metrics import RECALL_POINTS, ClassMetrics


def _class(cid: int, name: str, num_gt: int, ap50: float) -> ClassMetrics:
    curve = tuple(max(0.0, 1.0 - r) for r in RECALL_POINTS) if num_gt else ()
    return ClassMetrics(cid, name, num_gt, 3, ap50 / 2 if num_gt else -1.0,
                        ap50 if num_gt else -1.0, curve, curve)


CLASSES = [_class(1, "traffic light", 4, 0.5), _class(3, "cat/dog", 2, 0.25),
           _class(7, "cat_dog", 1, 1.0), _class(9, "absent", 0, 0.0)]


def test_names_are_made_safe_and_kept_apart():
    names = metric_names(class_rows(CLASSES))
    assert names == {1: "traffic light", 3: "cat_dog_3", 7: "cat_dog_7", 9: "absent"}


def test_only_measured_classes_become_metrics():
    metrics = class_metrics(class_rows(CLASSES))
    assert metrics == {"AP50/traffic light": 0.5, "AP/traffic light": 0.25,
                       "AP50/cat_dog_3": 0.25, "AP/cat_dog_3": 0.125,
                       "AP50/cat_dog_7": 1.0, "AP/cat_dog_7": 0.5}


def test_the_table_has_a_row_per_class_and_the_epoch():
    table = class_table(class_rows(CLASSES), epoch=4)
    assert table["epoch"] == [5] * 4
    assert table["name"] == ["traffic light", "cat/dog", "cat_dog", "absent"]
    assert table["AP50"] == [0.5, 0.25, 1.0, -1.0]
    assert {len(column) for column in table.values()} == {4}


@pytest.mark.parametrize("count", [0, 3, 30])
def test_the_picture_draws_any_number_of_classes(count):
    classes = [_class(i, f"class {i}", i % 3, 0.1 * (i % 10)) for i in range(1, count + 1)]
    figure = class_figure(classes, epoch=0)
    bars, curves = figure.axes
    assert len(bars.patches) == 2 * sum(1 for c in classes if c.num_gt)
    assert len(curves.lines) == min(10, sum(1 for c in classes if c.num_gt))
