"""The per-class table that ``pipelines.evaluate`` prints: each class's COCO AP and AP50 and,
at the confusion matrix's thresholds, what became of its boxes; then the commonest mix-ups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_HEADER = ("class", "boxes", "AP", "AP50", "found", "as other", "missed", "false pos")


def _ap(value: float) -> str:
    return "-" if value < 0 else f"{value:.4f}"  # -1: no ground truth to measure


def class_table(rows: Sequence[dict[str, Any]], matrix: dict[str, Any],
                confusions: Sequence[Sequence[Any]]) -> list[str]:
    """Lines of the table: ``rows`` are ``pipelines.evaluate``'s ``per_class`` entries,
    ``matrix`` its ``confusion_matrix`` and ``confusions`` its ``(true, predicted, count)``
    mix-ups, as in its JSON output."""
    width = max([len(_HEADER[0])] + [len(str(r["name"])) for r in rows])
    lines = [f"  per class (found / as other / missed / false pos: IoU >= "
             f"{matrix['iou_threshold']:g}, score >= {matrix['score_threshold']:g}):",
             "    " + f"{_HEADER[0]:<{width}}" + "".join(f"{h:>10}" for h in _HEADER[1:])]
    for row in rows:
        cells = (row["num_gt"], _ap(row["AP"]), _ap(row["AP50"]), row["found"],
                 row["as_other"], row["missed"], row["false_positives"])
        lines.append("    " + f"{row['name']!s:<{width}}" + "".join(f"{c!s:>10}" for c in cells))
    if confusions:
        lines.append("  most confused (true -> predicted): " + ", ".join(
            f"{true} -> {predicted} ({count})" for true, predicted, count in confusions))
    return lines
