"""Per-class AP, precision–recall curves and the confusion matrix, against a case computed by
hand, and against the overall COCO numbers for random detections."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samdetr.engine.class_metrics import RECALL_POINTS, confusion_matrix, per_class_metrics
from samdetr.engine.coco_eval import COCOEvaluator, coco_from_dict

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 7, "name": "bird"}]


def _gt(extra: list[dict] | None = None):
    boxes = [(1, 1, [10, 10, 20, 20]), (1, 2, [60, 60, 30, 30]), (2, 1, [20, 20, 40, 40])]
    anns = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": box,
             "area": box[2] * box[3], "iscrowd": 0} for i, (img, cat, box) in enumerate(boxes)]
    anns += extra or []
    return coco_from_dict({
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "annotations": anns, "categories": CATEGORIES,
    })


def _det(image_id, scores, labels, xywh):
    boxes = np.asarray(xywh, dtype=float).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return {"image_id": image_id, "scores": scores, "labels": labels, "boxes": boxes}


# cat: a hit (0.9), a miss-placed box (0.8), a hit (0.7); dog: nothing; bird (no ground truth):
# one box exactly on the dog.
DETECTIONS = [
    _det(1, [0.9, 0.6], [1, 7], [[10, 10, 20, 20], [60, 60, 30, 30]]),
    _det(2, [0.8, 0.7], [1, 1], [[70, 70, 10, 10], [20, 20, 40, 40]]),
]


def _evaluator(gt=None) -> COCOEvaluator:
    evaluator = COCOEvaluator(gt or _gt())
    evaluator.update(DETECTIONS)
    return evaluator


def test_per_class_ap_of_a_case_computed_by_hand():
    evaluator = _evaluator()
    metrics = evaluator.summarize()
    cat, dog, bird = evaluator.per_class()
    # cat, by score: hit, false positive, hit -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # COCO reads the interpolated precision at 101 recall points: 1.0 up to recall 0.50 (51
    # points), 2/3 above (50 points). Every hit has IoU 1, so AP (IoU .50:.95) equals AP50.
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    assert (cat.name, cat.num_gt, cat.num_detections) == ("cat", 2, 3)
    assert cat.AP50 == pytest.approx(expected) and cat.AP == pytest.approx(expected)
    assert cat.precision50 == pytest.approx([1.0] * 51 + [2 / 3] * 50)
    assert len(RECALL_POINTS) == 101 and RECALL_POINTS[50] == 0.5
    # dog: a box and no detection -> 0; bird: no ground truth -> -1 (nothing to measure).
    assert (dog.num_gt, dog.num_detections, dog.AP, dog.AP50) == (1, 0, 0.0, 0.0)
    assert dog.precision50 == pytest.approx([0.0] * 101)
    assert (bird.category_id, bird.num_gt, bird.num_detections) == (7, 0, 1)
    assert (bird.AP, bird.AP50, bird.precision50) == (-1.0, -1.0, ())
    # The overall AP is the mean over the classes that have ground truth.
    assert metrics["AP"] == pytest.approx((expected + 0.0) / 2)
    assert cat.as_row() == {"category_id": 1, "name": "cat", "num_gt": 2, "num_detections": 3,
                            "AP": cat.AP, "AP50": cat.AP50}


def test_confusion_matrix_of_the_same_case():
    matrix = _evaluator().confusion_matrix(iou_threshold=0.5, score_threshold=0.5)
    assert matrix.category_ids == (1, 2, 7) and matrix.names == ("cat", "dog", "bird")
    # rows: true cat, dog, bird, background; columns: predicted cat, dog, bird, background.
    assert matrix.counts.tolist() == [
        [2, 0, 0, 0],  # both cats found as cats
        [0, 0, 1, 0],  # the dog found, as a bird
        [0, 0, 0, 0],
        [1, 0, 0, 0],  # the misplaced cat box
    ]
    # Above 0.75 only the 0.9 and 0.8 boxes count: the second cat and the dog are missed.
    strict = _evaluator().confusion_matrix(score_threshold=0.75)
    assert strict.counts.tolist() == [[1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert matrix.class_counts()[:2] == [
        {"category_id": 1, "name": "cat", "found": 2, "as_other": 0, "missed": 0,
         "false_positives": 1},
        {"category_id": 2, "name": "dog", "found": 0, "as_other": 1, "missed": 0,
         "false_positives": 0},
    ]
    assert matrix.confusions() == [("dog", "bird", 1)]
    assert strict.as_dict()["counts"] == strict.counts.tolist()
    assert strict.as_dict()["score_threshold"] == 0.75


def test_a_detection_on_a_crowd_region_is_ignored_not_a_false_positive():
    crowd = {"id": 99, "image_id": 2, "category_id": 1, "bbox": [60, 60, 40, 40], "area": 1600,
             "iscrowd": 1}
    matrix = _evaluator(_gt([crowd])).confusion_matrix()
    assert matrix.counts[-1].tolist() == [0, 0, 0, 0]  # the misplaced box lies in the crowd
    assert matrix.counts[0].tolist() == [2, 0, 0, 0]  # the crowd region is no box to find


def test_one_detection_matches_one_box_the_closest_first():
    gt = coco_from_dict({
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [1, 0, 10, 10], "area": 100},
        ],
        "categories": CATEGORIES[:2],
    })
    results = [{"image_id": 1, "category_id": 2, "bbox": [1, 0, 10, 10], "score": 0.9}]
    counts = confusion_matrix(gt, results, iou_threshold=0.5).counts.tolist()
    # The dog box is matched to the dog (IoU 1), not to the cat (IoU 0.82) it also overlaps.
    assert counts == [[0, 0, 1], [0, 1, 0], [0, 0, 0]]


def test_bad_thresholds_and_inputs_are_refused():
    with pytest.raises(ValueError, match="iou_threshold must be a number in"):
        confusion_matrix(_gt(), [], iou_threshold=1.5)
    with pytest.raises(ValueError, match="score_threshold"):
        confusion_matrix(_gt(), [], score_threshold=True)
    with pytest.raises(TypeError, match="pycocotools COCO"):
        confusion_matrix({"images": []}, [])
    with pytest.raises(TypeError, match="COCOeval"):
        per_class_metrics(object())


def test_per_class_follows_new_detections():
    evaluator = _evaluator()
    assert evaluator.per_class()[1].AP == 0.0
    evaluator.update([_det(1, [0.9, 0.95], [1, 2], [[10, 10, 20, 20], [60, 60, 30, 30]])])
    assert evaluator.per_class()[1].AP == pytest.approx(1.0)
    evaluator.reset()
    assert all(c.AP == -1.0 for c in evaluator.per_class())  # nothing seen: nothing measured


box = st.tuples(st.integers(0, 80), st.integers(0, 80), st.integers(4, 20), st.integers(4, 20))


@settings(max_examples=25, deadline=None)
@given(gt_boxes=st.lists(st.tuples(st.integers(1, 2), st.sampled_from([1, 2, 7]), box),
                         min_size=1, max_size=8),
       dt_boxes=st.lists(st.tuples(st.integers(1, 2), st.sampled_from([1, 2, 7]), box,
                                   st.floats(0.01, 1.0)), max_size=12))
def test_the_mean_of_per_class_ap_is_the_overall_ap(gt_boxes, dt_boxes):
    anns = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": list(b),
             "area": b[2] * b[3], "iscrowd": 0} for i, (img, cat, b) in enumerate(gt_boxes)]
    gt = coco_from_dict({"images": [{"id": 1}, {"id": 2}], "annotations": anns,
                         "categories": CATEGORIES})
    evaluator = COCOEvaluator(gt, only_seen_images=False)
    for image_id in (1, 2):
        mine = [d for d in dt_boxes if d[0] == image_id]
        evaluator.update([_det(image_id, [d[3] for d in mine], [d[1] for d in mine],
                               [d[2] for d in mine])])
    metrics, classes = evaluator.summarize(), evaluator.per_class()
    measured = [c for c in classes if c.num_gt > 0]
    assert {c.category_id for c in measured} == {a["category_id"] for a in anns}
    for key in ("AP", "AP50"):
        assert metrics[key] == pytest.approx(np.mean([getattr(c, key) for c in measured]))
    matrix = evaluator.confusion_matrix(score_threshold=0.0)
    # Every box is either matched or missed; every kept detection matched or extra.
    assert matrix.counts[:-1].sum() == len(anns)
    assert matrix.counts[:, :-1].sum() == len(dt_boxes)
