"""Each class's validation numbers, every epoch: kept in the run's history and logged to MLflow
(per-class metrics, a table artifact and a picture), so that a run whose AP stays low shows which
classes hold it down, and since when."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from samdetr.engine.class_metrics import RECALL_POINTS, ClassMetrics

#: Classes drawn in the precision-recall panel (those with the most ground truth): more lines
#: than this are not readable.
MAX_CURVES = 10
_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. ]")


def class_rows(classes: Sequence[ClassMetrics]) -> list[dict[str, Any]]:
    """The scalar numbers of each class (id, name, ground truth, detections, AP, AP50): what
    the history keeps (plain, JSON-safe)."""
    return [metrics.as_row() for metrics in classes]


def metric_names(rows: Sequence[dict[str, Any]]) -> dict[int, str]:
    """``{category id: key}`` for MLflow metric names: the class name with the characters MLflow
    refuses replaced, and the id added where two names would then be the same."""
    safe = {row["category_id"]: _UNSAFE.sub("_", str(row["name"])) or "_" for row in rows}
    taken = Counter(safe.values())
    return {cid: (name if taken[name] == 1 else f"{name}_{cid}") for cid, name in safe.items()}


def class_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``AP50/<class>`` and ``AP/<class>`` of the classes with ground truth (COCO's -1 for
    "nothing to measure" would read as a score on a chart)."""
    names = metric_names(rows)
    out = {}
    for row in rows:
        if row["num_gt"] > 0:
            out[f"AP50/{names[row['category_id']]}"] = float(row["AP50"])
            out[f"AP/{names[row['category_id']]}"] = float(row["AP"])
    return out


def history_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """What an epoch's history entry (``{epoch, <metrics>, classes?}``) logs: its numbers and
    each class's AP, as the epoch logged them when it ran."""
    numbers = {k: float(v) for k, v in entry.items() if k not in ("epoch", "classes")}
    numbers.update(class_metrics(entry.get("classes", [])))
    return numbers


def class_table(rows: Sequence[dict[str, Any]], epoch: int) -> dict[str, list[Any]]:
    """The rows as MLflow table columns, with the epoch (1-based) on every row."""
    columns = ("category_id", "name", "num_gt", "num_detections", "AP", "AP50")
    table: dict[str, list[Any]] = {"epoch": [epoch + 1] * len(rows)}
    table.update({column: [row[column] for row in rows] for column in columns})
    return table


def class_figure(classes: Sequence[ClassMetrics], epoch: int) -> Any:
    """AP50 and AP of every class (bars), and the precision-recall curves at IoU 0.5 of the
    :data:`MAX_CURVES` classes with the most ground truth. A matplotlib ``Figure`` made without
    pyplot."""
    from matplotlib.figure import Figure

    measured = [c for c in classes if c.num_gt > 0]
    figure = Figure(figsize=(10, 3.6))
    bars, curves = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    positions = range(len(measured))
    bars.bar([p - 0.2 for p in positions], [100 * c.AP50 for c in measured], 0.4, label="AP50")
    bars.bar([p + 0.2 for p in positions], [100 * c.AP for c in measured], 0.4, label="AP")
    bars.set_xticks(list(positions), [c.name for c in measured],
                    rotation=60 if len(measured) > 8 else 0, ha="right" if len(measured) > 8
                    else "center", fontsize=7 if len(measured) > 20 else 9)
    bars.set_ylabel("validation AP (%)")
    bars.set_ylim(0, 100)
    bars.set_title(f"each class, epoch {epoch + 1}")
    bars.legend()
    bars.grid(axis="y", alpha=0.3)
    for metrics in sorted(measured, key=lambda c: -c.num_gt)[:MAX_CURVES]:
        curves.plot(RECALL_POINTS, metrics.precision50, label=metrics.name)
    curves.set_xlabel("recall")
    curves.set_ylabel("precision (IoU 0.5)")
    curves.set_xlim(0, 1)
    curves.set_ylim(0, 1.02)
    curves.set_title("precision-recall")
    if measured:
        curves.legend(fontsize=7)
    curves.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def log_classes(logger: Any, epoch: int, classes: Sequence[ClassMetrics]) -> None:
    """Log the epoch's per-class metrics, table (``classes/epoch_NNNN.json``) and picture
    (``classes/epoch_NNNN.png``) through the run's :class:`~pipelines.common.run_logger.RunLogger`
    (queued: an outage of the store never stops training)."""
    rows = class_rows(classes)
    logger.log_metrics(class_metrics(rows), step=epoch)
    logger.log_table(class_table(rows, epoch), f"classes/epoch_{epoch + 1:04d}.json")
    logger.log_figure(class_figure(classes, epoch), f"classes/epoch_{epoch + 1:04d}.png")
