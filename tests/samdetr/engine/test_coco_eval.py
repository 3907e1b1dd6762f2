"""COCO evaluation helper on the coco128-dev annotations."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from samdetr.engine.coco_eval import (
    METRIC_NAMES,
    COCOEvaluator,
    coco_from_dict,
    detections_to_coco_results,
    evaluate_detections,
)


@pytest.fixture(scope="module")
def coco_gt(coco128_dir) -> COCO:
    return COCO(str(coco128_dir / "annotations.json"))


def gt_as_detections(coco: COCO, shift: float = 0.0) -> list[dict]:
    """Ground truth turned into per-image detections (score 1, xyxy), boxes shifted right."""
    per_image: dict[int, list] = defaultdict(list)
    for ann in coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        box = [x + shift, y, x + shift + w, y + h]
        per_image[ann["image_id"]].append((ann["category_id"], box))
    dets = []
    for image_id in coco.getImgIds():
        items = per_image.get(image_id, [])
        dets.append(
            {
                "image_id": image_id,
                "scores": torch.ones(len(items)),
                "labels": torch.tensor([c for c, _ in items], dtype=torch.int64),
                "boxes": torch.tensor([b for _, b in items], dtype=torch.float32).reshape(-1, 4),
            }
        )
    return dets


def test_metric_names():
    assert METRIC_NAMES == (
        "AP", "AP50", "AP75", "APs", "APm", "APl",
        "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
    )  # fmt: skip


def test_ground_truth_as_detections_is_perfect(coco_gt):
    metrics = evaluate_detections(coco_gt, gt_as_detections(coco_gt))
    assert list(metrics) == list(METRIC_NAMES)
    assert all(isinstance(v, float) for v in metrics.values())
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert metrics[name] == pytest.approx(1.0), name


def test_shifted_boxes_score_lower(coco_gt):
    perfect = evaluate_detections(coco_gt, gt_as_detections(coco_gt))
    shifted = evaluate_detections(coco_gt, gt_as_detections(coco_gt, shift=8.0))
    assert shifted["AP"] < perfect["AP"]
    assert shifted["AP75"] < shifted["AP50"] <= 1.0
    assert 0.0 < shifted["AP"]


def test_empty_detection_list(coco_gt, capsys):
    metrics = evaluate_detections(coco_gt, [])
    assert set(metrics) == set(METRIC_NAMES)
    # GT exists for every area range here, so nothing found means 0, not COCOeval's -1.
    assert all(v == 0.0 for v in metrics.values()), metrics
    assert capsys.readouterr().out == ""  # COCOeval's prints are silenced by default


def test_images_without_detections_count_as_misses(coco_gt):
    dets = gt_as_detections(coco_gt)
    with_boxes = [d for d in dets if len(d["boxes"])]
    half = with_boxes[: len(with_boxes) // 2]
    metrics = evaluate_detections(coco_gt, half)
    assert 0.0 < metrics["AR100"] < 1.0


def test_unknown_image_id_raises(coco_gt):
    bad = {"image_id": 10**9, "scores": [0.5], "labels": [1], "boxes": [[0, 0, 10, 10]]}
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_detections(coco_gt, [bad])


@pytest.mark.parametrize(
    "det, err",
    [
        ({"image_id": 9, "scores": [1.0], "labels": [1]}, ValueError),  # no boxes key
        ({"image_id": 9, "scores": [1.0], "labels": [1], "boxes": [[0, 0, 1]]}, ValueError),
        ({"image_id": 9, "scores": [1.0, 0.5], "labels": [1], "boxes": [[0, 0, 1, 1]]}, ValueError),
        ({"image_id": 9, "scores": [1.0], "labels": [1], "boxes": [[5, 0, 1, 1]]}, ValueError),
        ({"image_id": 9, "scores": [np.nan], "labels": [1], "boxes": [[0, 0, 1, 1]]}, ValueError),
        ({"image_id": "9", "scores": [1.0], "labels": [1], "boxes": [[0, 0, 1, 1]]}, TypeError),
        ({"image_id": 9, "scores": [1.0], "labels": [1.5], "boxes": [[0, 0, 1, 1]]}, TypeError),
    ],
)
def test_malformed_detections_raise(coco_gt, det, err):
    with pytest.raises(err):
        evaluate_detections(coco_gt, [det])


def test_duplicate_image_id_raises(coco_gt):
    det = {"image_id": 9, "scores": [1.0], "labels": [1], "boxes": [[0, 0, 1, 1]]}
    with pytest.raises(ValueError, match="more than one"):
        evaluate_detections(coco_gt, [det, det])


def test_not_a_coco_object_raises():
    with pytest.raises(TypeError):
        evaluate_detections({"images": []}, [])


def test_results_are_xywh():
    det = {"image_id": 3, "scores": np.array([0.9]), "labels": np.array([7]),
           "boxes": np.array([[10.0, 20.0, 15.0, 40.0]])}  # fmt: skip
    (res,) = detections_to_coco_results([det])
    assert res == {"image_id": 3, "category_id": 7, "bbox": [10.0, 20.0, 5.0, 20.0], "score": 0.9}
    json.dumps(res)  # plain Python numbers


def test_coco_from_dict_matches_file(coco128_dir, coco_gt):
    dataset = json.loads((coco128_dir / "annotations.json").read_text())
    coco = coco_from_dict(dataset)
    assert coco.getImgIds() == coco_gt.getImgIds()
    assert len(coco.getAnnIds()) == len(coco_gt.getAnnIds())
    assert evaluate_detections(coco, gt_as_detections(coco))["AP"] == pytest.approx(1.0)
    assert "ignore" not in dataset["annotations"][0]  # caller's dict left untouched


def test_coco_from_dict_rejects_bad_input():
    with pytest.raises(TypeError):
        coco_from_dict([])
    with pytest.raises(ValueError, match="images"):
        coco_from_dict({"annotations": []})


def test_evaluator_accumulates_batches(coco_gt):
    dets = gt_as_detections(coco_gt)
    evaluator = COCOEvaluator(coco_gt)
    for start in range(0, len(dets), 8):
        evaluator.update(dets[start : start + 8])
    evaluator.update(dets[:2])  # repeated (DistributedSampler padding) replaces, not doubles
    assert len(evaluator) == len(coco_gt.getImgIds())
    assert evaluator.summarize() == evaluate_detections(coco_gt, dets)
    evaluator.reset()
    assert len(evaluator) == 0


def test_evaluator_only_seen_images(coco_gt):
    dets = [d for d in gt_as_detections(coco_gt) if len(d["boxes"])][:10]
    seen_only = COCOEvaluator(coco_gt)
    everything = COCOEvaluator(coco_gt, only_seen_images=False)
    seen_only.update(dets)
    everything.update(dets)
    assert seen_only.summarize()["AP"] == pytest.approx(1.0)
    assert everything.summarize()["AR100"] < 1.0


def test_evaluator_with_nothing_seen(coco_gt):
    assert all(v == -1.0 for v in COCOEvaluator(coco_gt).summarize().values())
    everything = COCOEvaluator(coco_gt, only_seen_images=False)
    assert all(v == 0.0 for v in everything.summarize().values())


def test_evaluator_rejects_single_dict(coco_gt):
    with pytest.raises(TypeError, match="list"):
        COCOEvaluator(coco_gt).update({"image_id": 9, "scores": [], "labels": [], "boxes": []})
