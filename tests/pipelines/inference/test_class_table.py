"""The per-class table of ``pipelines.evaluate``: one line per class, '-' where a class has no
ground truth to measure, the commonest mix-ups last."""

from __future__ import annotations

from pipelines.inference.class_table import class_table

ROWS = [
    {"name": "cat", "num_gt": 2, "AP": 0.41749, "AP50": 0.8349, "found": 2, "as_other": 0,
     "missed": 0, "false_positives": 1},
    {"name": "bird", "num_gt": 0, "AP": -1.0, "AP50": -1.0, "found": 0, "as_other": 0,
     "missed": 0, "false_positives": 3},
]
MATRIX = {"iou_threshold": 0.5, "score_threshold": 0.25}


def test_each_class_on_a_line_of_aligned_columns():
    lines = class_table(ROWS, MATRIX, [("dog", "bird", 4), ("cat", "dog", 1)])
    assert lines[0] == ("  per class (found / as other / missed / false pos: IoU >= 0.5, "
                        "score >= 0.25):")
    assert lines[1].split() == ["class", "boxes", "AP", "AP50", "found", "as", "other",
                                "missed", "false", "pos"]
    assert lines[2].split() == ["cat", "2", "0.4175", "0.8349", "2", "0", "0", "1"]
    assert lines[3].split() == ["bird", "0", "-", "-", "0", "0", "0", "3"]
    assert len({len(line) for line in lines[1:4]}) == 1  # aligned
    assert lines[4] == "  most confused (true -> predicted): dog -> bird (4), cat -> dog (1)"


def test_no_mix_ups_no_line():
    assert len(class_table(ROWS, MATRIX, [])) == 4
