"""COCO box evaluation on top of pycocotools' ``COCOeval``.

Detections use the post-processor's per-image output format plus the image id::

    {"image_id": int,
     "scores": (N,) float,           # confidence, higher is better
     "labels": (N,) int,             # COCO category ids (as in the ground truth)
     "boxes":  (N, 4) float}         # absolute pixel (x1, y1, x2, y2)

Each field may be a torch tensor, a numpy array or a (nested) list. Results are the 12 standard
COCO numbers, keyed by :data:`METRIC_NAMES`; as in ``COCOeval``, a metric that has no ground truth
to measure (e.g. ``APs`` when there are no small objects) is ``-1.0``.

This module depends only on numpy and pycocotools (not torch) so it can run anywhere.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from samdetr.engine.class_metrics import (
    ClassMetrics,
    ConfusionMatrix,
    confusion_matrix,
    per_class_metrics,
)

__all__ = [
    "METRIC_NAMES",
    "COCOEvaluator",
    "coco_from_dict",
    "detections_to_coco_results",
    "evaluate_detections",
]

#: Names of ``COCOeval.stats`` entries, in COCOeval's order.
METRIC_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip

_REQUIRED_KEYS = ("image_id", "scores", "labels", "boxes")


def coco_from_dict(dataset: Mapping[str, Any]) -> COCO:
    """Build a pycocotools ``COCO`` index from an in-memory COCO-format dict (no temp file).

    Args:
        dataset: dict with at least ``"images"`` (list of ``{"id", ...}``); usually also
            ``"annotations"`` (``{"id", "image_id", "category_id", "bbox": [x, y, w, h],
            "area", "iscrowd"}``) and ``"categories"``.

    The dict is deep-copied because ``COCOeval`` writes into the annotations it evaluates.
    """
    if not isinstance(dataset, Mapping):
        raise TypeError(f"dataset must be a COCO-format dict, got {type(dataset).__name__}")
    if not isinstance(dataset.get("images"), list):
        raise ValueError("dataset needs an 'images' list (COCO format: [{'id': ..., ...}, ...])")
    for key in ("annotations", "categories"):
        if key in dataset and not isinstance(dataset[key], list):
            raise ValueError(f"dataset[{key!r}] must be a list, got {type(dataset[key]).__name__}")
    for ann in dataset.get("annotations", []):
        missing = [k for k in ("id", "image_id", "category_id", "bbox") if k not in ann]
        if missing:
            raise ValueError(f"annotation {ann!r} lacks required keys {missing}")
    coco = COCO()  # no file: pycocotools builds an empty index
    coco.dataset = copy.deepcopy(dict(dataset))
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def _to_numpy(value: Any, name: str, image_id: int) -> np.ndarray:
    """Turn a tensor/array/list into a numpy array (detaching and moving torch tensors to CPU)."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"image {image_id}: {name!r} is not array-like ({err})") from err


def _image_id(value: Any) -> int:
    """Validate an image id given as int, numpy integer or 0-d integer tensor."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"image_id must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def _check_one(det: Any) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Validate one per-image detection dict; return (image_id, scores, labels, xyxy boxes)."""
    if not isinstance(det, Mapping):
        raise TypeError(f"each detection must be a dict, got {type(det).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in det]
    if missing:
        raise ValueError(f"detection dict lacks keys {missing}; needs {list(_REQUIRED_KEYS)}")
    image_id = _image_id(det["image_id"])
    scores = _to_numpy(det["scores"], "scores", image_id)
    labels = _to_numpy(det["labels"], "labels", image_id)
    boxes = _to_numpy(det["boxes"], "boxes", image_id)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)  # allow [] or (0,) for "no boxes"
    if scores.ndim != 1 or labels.ndim != 1 or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"image {image_id}: expected scores (N,), labels (N,), boxes (N, 4); got shapes "
            f"{scores.shape}, {labels.shape}, {boxes.shape}"
        )
    if not (len(scores) == len(labels) == len(boxes)):
        raise ValueError(
            f"image {image_id}: scores, labels and boxes disagree on N "
            f"({len(scores)}, {len(labels)}, {len(boxes)})"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or np.any(labels != np.round(labels)):
            raise TypeError(f"image {image_id}: labels must be integer category ids")
    scores = scores.astype(np.float64)
    boxes = boxes.astype(np.float64)
    if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
        raise ValueError(f"image {image_id}: scores/boxes contain NaN or inf")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise ValueError(
            f"image {image_id}: boxes must be absolute (x1, y1, x2, y2) with x2 >= x1 and "
            "y2 >= y1 (did you pass normalized cxcywh or xywh?)"
        )
    return image_id, scores, labels.astype(np.int64), boxes


def detections_to_coco_results(
    detections: Iterable[Mapping[str, Any]], valid_image_ids: Iterable[int] | None = None
) -> list[dict[str, Any]]:
    """Convert per-image detections (xyxy) to the COCO result list (one dict per box, xywh).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` as plain Python
        numbers (JSON-serializable).

    Raises:
        ValueError: an image id appears twice, or is not in ``valid_image_ids`` (when given).
    """
    valid = None if valid_image_ids is None else set(valid_image_ids)
    seen: set[int] = set()
    results: list[dict[str, Any]] = []
    for det in detections:
        image_id, scores, labels, boxes = _check_one(det)
        if valid is not None and image_id not in valid:
            raise ValueError(
                f"detections name image_id {image_id}, which is not in the ground truth "
                f"({len(valid)} images); are detections and annotations from the same split?"
            )
        if image_id in seen:
            raise ValueError(f"image_id {image_id} appears in more than one detection dict")
        seen.add(image_id)
        xywh = boxes.copy()
        xywh[:, 2:] -= xywh[:, :2]
        for score, label, box in zip(scores.tolist(), labels.tolist(), xywh.tolist(), strict=True):
            results.append(
                {"image_id": image_id, "category_id": label, "bbox": box, "score": score}
            )
    return results


def _results_coco(coco_gt: COCO, results: list[dict[str, Any]]) -> COCO:
    """Index COCO results like ``COCO.loadRes`` does for boxes, but also for an empty list.

    ``loadRes([])`` crashes in pycocotools, and it prints; building the index here avoids both.
    """
    anns = []
    for i, res in enumerate(results, start=1):
        w, h = res["bbox"][2], res["bbox"][3]
        anns.append({**res, "id": i, "area": w * h, "iscrowd": 0})
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def _accumulated(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    verbose: bool,
    image_ids: list[int] | None = None,
) -> COCOeval:
    """``COCOeval`` of ``results`` on ``image_ids`` (default: every ground-truth image),
    evaluated, accumulated and summarized."""
    coco_dt = _results_coco(coco_gt, results)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids)
    # COCOeval reports through print(); swallow it unless the caller wants the table.
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _stats(evaluator: COCOeval) -> dict[str, float]:
    return {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats, strict=True)}


def evaluate_detections(
    coco_gt: COCO, detections: Iterable[Mapping[str, Any]], *, verbose: bool = False
) -> dict[str, float]:
    """Run COCO bbox evaluation and return the 12 standard metrics by name.

    Args:
        coco_gt: ground truth, e.g. ``COCO(path)`` or :func:`coco_from_dict`.
        detections: per-image dicts (see module docstring), at most one per image. Every image of
            ``coco_gt`` is evaluated; images without a detection dict count as having no boxes.
            Boxes whose label is not a ground-truth category are ignored, as COCOeval does.
        verbose: print COCOeval's progress and summary table.

    Returns:
        ``{name: value}`` for ``name`` in :data:`METRIC_NAMES`; values in [0, 1], or -1.0 where
        COCOeval has nothing to measure.

    Raises:
        TypeError: ``coco_gt`` is not a ``COCO``, or a detection field has the wrong type.
        ValueError: malformed detections, or an image id that is not in ``coco_gt``.
    """
    if not isinstance(coco_gt, COCO):
        raise TypeError(f"coco_gt must be a pycocotools COCO, got {type(coco_gt).__name__}")
    results = detections_to_coco_results(detections, coco_gt.getImgIds())
    return _stats(_accumulated(coco_gt, results, verbose))


class COCOEvaluator:
    """Accumulate detections batch by batch, then compute COCO metrics once.

    Example::

        evaluator = COCOEvaluator(coco_gt)
        for images, targets in loader:
            outputs = postprocess(model(images), sizes)  # list of {"scores", "labels", "boxes"}
            evaluator.update([{**o, "image_id": t["image_id"]} for o, t in zip(outputs, targets)])
        metrics = evaluator.summarize()
        classes = evaluator.per_class()  # how each class does (samdetr.engine.class_metrics)

    Detections are validated and converted at :meth:`update` time (tensors leave the device
    right away). If an image id arrives twice, the later detections replace the earlier ones;
    this keeps the repeated samples that ``DistributedSampler`` pads with from counting twice.

    Args:
        coco_gt: ground truth.
        only_seen_images: evaluate only images passed to :meth:`update` (an image passed with
            zero boxes still counts as seen), so evaluating part of a split is meaningful. With
            False, unseen ground-truth images count as images with no detections.
        verbose: print COCOeval's progress and summary table.
    """

    def __init__(
        self, coco_gt: COCO, *, only_seen_images: bool = True, verbose: bool = False
    ) -> None:
        if not isinstance(coco_gt, COCO):
            raise TypeError(f"coco_gt must be a pycocotools COCO, got {type(coco_gt).__name__}")
        self.coco_gt = coco_gt
        self.only_seen_images = only_seen_images
        self.verbose = verbose
        self._valid_ids = set(coco_gt.getImgIds())
        self._results: dict[int, list[dict[str, Any]]] = {}
        # The last COCOeval run and the number of changes it saw: per_class() reuses it.
        self._changes = 0
        self._evaluated: tuple[int, COCOeval] | None = None

    def update(self, detections: Iterable[Mapping[str, Any]]) -> None:
        """Add a batch of per-image detection dicts (see module docstring)."""
        if isinstance(detections, Mapping):
            raise TypeError("update() takes a list of per-image detection dicts, not one dict")
        for det in detections:
            results = detections_to_coco_results([det], self._valid_ids)
            self._results[_image_id(det["image_id"])] = results
            self._changes += 1

    @property
    def image_ids(self) -> list[int]:
        """Sorted ids of the images seen so far."""
        return sorted(self._results)

    @property
    def results(self) -> list[dict[str, Any]]:
        """All boxes so far in COCO result format (plain Python, picklable for gathering)."""
        return [res for image_id in self.image_ids for res in self._results[image_id]]

    def __len__(self) -> int:
        """Number of distinct images seen."""
        return len(self._results)

    def reset(self) -> None:
        """Forget all accumulated detections."""
        self._results.clear()
        self._changes += 1

    def _evaluation(self) -> COCOeval:
        """The ``COCOeval`` of everything accumulated (run again only after a change)."""
        if self._evaluated is None or self._evaluated[0] != self._changes:
            self._evaluated = (self._changes, _accumulated(
                self.coco_gt, self.results, self.verbose, self._image_ids()))
        return self._evaluated[1]

    def _image_ids(self) -> list[int] | None:
        return self.image_ids if self.only_seen_images else None

    def summarize(self) -> dict[str, float]:
        """Evaluate everything accumulated; returns ``{name: value}`` for :data:`METRIC_NAMES`.

        With ``only_seen_images`` and nothing seen yet, every metric is -1.0.
        """
        return _stats(self._evaluation())

    def per_class(self) -> list[ClassMetrics]:
        """Each category's AP, AP50 and precision–recall curves on what was accumulated
        (:func:`samdetr.engine.class_metrics.per_class_metrics`), from the same evaluation as
        :meth:`summarize`."""
        return per_class_metrics(self._evaluation())

    def confusion_matrix(
        self, *, iou_threshold: float = 0.5, score_threshold: float = 0.5
    ) -> ConfusionMatrix:
        """Counts of (true class, predicted class) on what was accumulated
        (:func:`samdetr.engine.class_metrics.confusion_matrix`)."""
        return confusion_matrix(self.coco_gt, self.results, self._image_ids(),
                                iou_threshold=iou_threshold, score_threshold=score_threshold)
