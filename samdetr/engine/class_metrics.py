"""How each class does: per-class COCO AP and AP50, precision–recall curves, and a confusion
matrix at a stated IoU and score threshold.

    evaluator = COCOEvaluator(coco_gt)        # samdetr.engine.coco_eval
    ...                                       # evaluator.update(batch) for every batch
    metrics = evaluator.summarize()           # the 12 COCO numbers
    classes = evaluator.per_class()           # [ClassMetrics, ...], one per category
    matrix = evaluator.confusion_matrix(iou_threshold=0.5, score_threshold=0.5)

AP and AP50 follow COCO's definitions exactly: they are read from the same accumulated
``COCOeval`` as the overall numbers (area "all", 100 detections per image), so the mean of the
per-class AP over the classes that have ground truth is the overall AP.

Like :mod:`samdetr.engine.coco_eval`, this module needs only numpy and pycocotools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["RECALL_POINTS", "ClassMetrics", "ConfusionMatrix", "check_threshold",
           "confusion_matrix", "per_class_metrics"]

#: The recall values at which COCOeval reads precision (0, 0.01, ..., 1): the x of the curves.
RECALL_POINTS: tuple[float, ...] = tuple(np.linspace(0.0, 1.0, 101).round(2).tolist())


@dataclass(frozen=True)
class ClassMetrics:
    """One category's numbers on the evaluated images.

    ``AP`` / ``AP50`` are -1.0 when the category has no ground truth there (COCOeval's
    convention: nothing to measure). ``precision50`` is the COCO-interpolated precision at each
    of :data:`RECALL_POINTS` at IoU 0.5 (0.0 beyond the highest recall reached; empty when
    there is no ground truth); ``precision`` is the same averaged over the ten IoU thresholds.
    """

    category_id: int
    name: str
    num_gt: int  # ground-truth boxes, crowd regions not counted
    num_detections: int
    AP: float  # noqa: N815 - COCO's name
    AP50: float  # noqa: N815
    precision50: tuple[float, ...]
    precision: tuple[float, ...]

    def as_row(self) -> dict[str, Any]:
        """The scalar fields, for a table (the curves left out)."""
        return {"category_id": self.category_id, "name": self.name, "num_gt": self.num_gt,
                "num_detections": self.num_detections, "AP": self.AP, "AP50": self.AP50}


def _mean_measured(values: np.ndarray) -> float:
    """Mean of the entries COCOeval measured (it writes -1 where there is nothing to measure)."""
    measured = values[values > -1]
    return float(measured.mean()) if measured.size else -1.0


def per_class_metrics(evaluator: COCOeval) -> list[ClassMetrics]:
    """:class:`ClassMetrics` of every category of an evaluated and accumulated ``COCOeval``
    (``evaluate()`` and ``accumulate()`` called), in the order of its category ids."""
    if not isinstance(evaluator, COCOeval):
        raise TypeError(f"evaluator must be a pycocotools COCOeval, got {type(evaluator).__name__}")
    if not evaluator.eval or "precision" not in evaluator.eval:
        raise ValueError("the COCOeval has not been evaluated and accumulated yet: call its "
                         "evaluate() and accumulate() first")
    params = evaluator.params
    # (iou thresholds, recall points, categories, area ranges, max detections)
    precision = evaluator.eval["precision"][:, :, :, params.areaRngLbl.index("all"), -1]
    iou50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    gt, dt = evaluator.cocoGt, evaluator.cocoDt
    out = []
    for k, category in enumerate(params.catIds):
        curves = precision[:, :, k]  # (T, R)
        has_gt = bool((curves > -1).any())
        out.append(ClassMetrics(
            category_id=int(category),
            name=str(gt.cats.get(category, {}).get("name", category)),
            num_gt=len(gt.getAnnIds(imgIds=params.imgIds, catIds=[category], iscrowd=False)),
            num_detections=len(dt.getAnnIds(imgIds=params.imgIds, catIds=[category])),
            AP=_mean_measured(curves),
            AP50=_mean_measured(curves[iou50]),
            precision50=tuple(float(v) for v in curves[iou50]) if has_gt else (),
            precision=tuple(float(v) for v in curves.mean(axis=0)) if has_gt else (),
        ))
    return out


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts of (true class, predicted class) over the evaluated images.

    ``counts`` is ``(K + 1, K + 1)``, rows the ground truth and columns the prediction, in the
    order of ``category_ids``; the last row and column are *background*: a detection that
    matched no ground-truth box counts in the last row (a false positive), a ground-truth box
    that no detection matched in the last column (a miss). The diagonal is the hits.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    counts: np.ndarray
    iou_threshold: float
    score_threshold: float

    def class_counts(self) -> list[dict[str, Any]]:
        """Per class: ``found`` (matched, right class), ``as_other`` (matched, another class
        predicted), ``missed`` (no detection matched), ``false_positives`` (its detections
        that matched no box)."""
        counts, last = self.counts, len(self.category_ids)
        return [{"category_id": c, "name": n, "found": int(counts[i, i]),
                 "as_other": int(counts[i, :last].sum() - counts[i, i]),
                 "missed": int(counts[i, last]), "false_positives": int(counts[last, i])}
                for i, (c, n) in enumerate(zip(self.category_ids, self.names, strict=True))]

    def confusions(self, top: int = 5) -> list[tuple[str, str, int]]:
        """The ``top`` most frequent ``(true class, predicted class, count)`` mix-ups."""
        last = len(self.category_ids)
        pairs = [(self.names[t], self.names[p], int(self.counts[t, p]))
                 for t in range(last) for p in range(last) if t != p and self.counts[t, p]]
        return sorted(pairs, key=lambda pair: -pair[2])[:top]

    def as_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (JSON-serialisable)."""
        return {"category_ids": list(self.category_ids), "names": list(self.names),
                "counts": self.counts.tolist(), "iou_threshold": self.iou_threshold,
                "score_threshold": self.score_threshold}


def check_threshold(value: float, name: str) -> float:
    """``value`` as a float, if it is a number in [0, 1]; else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _image_matches(gt: Sequence[Mapping[str, Any]], dt: Sequence[Mapping[str, Any]],
                   iou_threshold: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Greedy one-to-one matching of one image's detections to its non-crowd boxes, whatever
    the classes, the pairs of highest IoU first (ties: the higher score). Returns the matched
    ``(gt index, dt index)`` pairs, the unmatched ground-truth indices and the unmatched
    detection indices that do not fall on a crowd region (those are ignored, as in COCOeval)."""
    solid = [i for i, g in enumerate(gt) if not g.get("iscrowd", 0)]
    crowd = [i for i, g in enumerate(gt) if g.get("iscrowd", 0)]
    boxes = [d["bbox"] for d in dt]
    pairs: list[tuple[int, int]] = []
    used_dt: set[int] = set()
    if solid and dt:
        # pycocotools' box IoU: boxes are [x, y, w, h]; (D, G).
        iou = np.asarray(coco_mask.iou(boxes, [gt[i]["bbox"] for i in solid], [0] * len(solid)))
        candidates = [(iou[d, g], dt[d]["score"], d, g) for d, g in zip(
            *np.nonzero(iou >= iou_threshold), strict=True)]
        used_gt: set[int] = set()
        for _, _, d, g in sorted(candidates, key=lambda c: (-c[0], -c[1], c[2], c[3])):
            if d not in used_dt and g not in used_gt:
                used_dt.add(int(d))
                used_gt.add(int(g))
                pairs.append((solid[g], int(d)))
    matched_gt = {g for g, _ in pairs}
    missed = [i for i in solid if i not in matched_gt]
    extra = [d for d in range(len(dt)) if d not in used_dt]
    if crowd and extra:
        # For a crowd region pycocotools measures the detection's share inside it.
        inside = np.asarray(coco_mask.iou([boxes[d] for d in extra],
                                          [gt[i]["bbox"] for i in crowd], [1] * len(crowd)))
        extra = [d for d, row in zip(extra, inside, strict=True) if row.max() < iou_threshold]
    return pairs, missed, extra


def confusion_matrix(
    coco_gt: COCO,
    results: Iterable[Mapping[str, Any]],
    image_ids: Iterable[int] | None = None,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> ConfusionMatrix:
    """The :class:`ConfusionMatrix` of COCO-format ``results`` (``{"image_id",
    "category_id", "bbox": [x, y, w, h], "score"}``, e.g. ``COCOEvaluator.results``) on
    ``image_ids`` (default: every ground-truth image).

    Detections scoring below ``score_threshold`` are left out; a detection and a ground-truth
    box match when their IoU is at least ``iou_threshold``, each at most once, whatever their
    classes (so a box found with the wrong class shows off the diagonal). Detections of a
    category the ground truth does not have are left out, as COCOeval does.
    """
    if not isinstance(coco_gt, COCO):
        raise TypeError(f"coco_gt must be a pycocotools COCO, got {type(coco_gt).__name__}")
    iou_threshold = check_threshold(iou_threshold, "iou_threshold")
    score_threshold = check_threshold(score_threshold, "score_threshold")
    category_ids = tuple(sorted(coco_gt.getCatIds()))
    index = {c: i for i, c in enumerate(category_ids)}
    background = len(category_ids)
    images = set(coco_gt.getImgIds()) if image_ids is None else {int(i) for i in image_ids}
    by_image: dict[int, list[Mapping[str, Any]]] = {i: [] for i in images}
    for res in results:
        if (res["image_id"] in by_image and res["category_id"] in index
                and res["score"] >= score_threshold):
            by_image[res["image_id"]].append(res)
    counts = np.zeros((background + 1, background + 1), dtype=np.int64)
    for image_id, dt in by_image.items():
        gt = [a for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
              if a["category_id"] in index]
        pairs, missed, extra = _image_matches(gt, dt, iou_threshold)
        for g, d in pairs:
            counts[index[gt[g]["category_id"]], index[dt[d]["category_id"]]] += 1
        for g in missed:
            counts[index[gt[g]["category_id"]], background] += 1
        for d in extra:
            counts[background, index[dt[d]["category_id"]]] += 1
    names = tuple(str(coco_gt.cats[c].get("name", c)) for c in category_ids)
    return ConfusionMatrix(category_ids, names, counts, iou_threshold, score_threshold)
