"""Does an exported detector give what the PyTorch model gives? The acceptance of an export.

    report = parity_report(model, OnnxDetector("detector.onnx"), generated_images([(480, 640)]))
    report["passed"], report["max"]      # the largest differences over every batch

The exported runner (:mod:`samdetr.export.runtime`) and the model see the same padded batches,
one image at a time and two at once (of different sizes: the padding mask is exercised). Its
raw outputs are compared element by element and its top-k detections (its own post-processing
when the graph has it, else :class:`PostProcess` of its outputs) against the model's, matched
by (query, class): the same detections must come out, with the same scores and boxes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from samdetr.batching import pad_images
from samdetr.model.detector import SAMDETR
from samdetr.model.postprocess import PostProcess

__all__ = ["TOLERANCES", "compare_detections", "generated_images", "parity_report"]

#: Largest absolute differences accepted, float32 on the CPU. Logits are sums over D features
#: whose order the runtimes choose differently (measured: under 1e-5 on the tiny test models,
#: a few 1e-5 on ResNet-50 models, docs/export.md); boxes and scores are sigmoids, flatter.
#: ``boxes_px``: detection boxes in pixels of the original image (normalised boxes times sizes
#: of about a thousand pixels).
TOLERANCES = {"pred_logits": 1e-4, "pred_boxes": 1e-5, "scores": 1e-5, "boxes_px": 2e-2}
# ImageNet statistics, as the eval transform normalises.
_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

Runner = Callable[..., Mapping[str, Tensor]]


def generated_images(sizes: Sequence[tuple[int, int]], seed: int = 0) -> list[Tensor]:
    """One normalised (3, h, w) image per (h, w): smooth colour noise with a few filled
    rectangles, so that the features have edges and flat parts as photos do."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for height, width in sizes:
        if height < 1 or width < 1:
            raise ValueError(f"image sizes must be positive, got {(height, width)}")
        coarse = torch.rand(1, 3, max(height // 16, 1), max(width // 16, 1), generator=generator)
        pixels = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear",
                                                 align_corners=False)[0]
        for _ in range(4):
            y, x = (int(torch.randint(0, max(n - 8, 1), (1,), generator=generator))
                    for n in (height, width))
            h, w = (int(torch.randint(8, max(n // 2, 9), (1,), generator=generator))
                    for n in (height, width))
            pixels[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=generator)
        images.append((pixels - _MEAN) / _STD)
    return images


def _max_abs(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def compare_detections(reference: Sequence[Mapping[str, Tensor]],
                       exported: Sequence[Mapping[str, Tensor]], num_classes: int,
                       score_tolerance: float) -> dict[str, Any]:
    """Per-image top-k detections (``scores``, ``labels``, ``boxes``, ``queries``) matched by
    (query, class).

    Returns ``agreement`` (the share of the reference's detections the export also gives),
    ``unexplained`` (missing ones not at a tie: a reference score farther than
    ``score_tolerance`` from the k-th score, where the two runtimes may order near-equal
    scores differently), ``labels_in_order`` (the label sequences equal), and
    ``scores_max_abs`` / ``boxes_max_abs_px`` over the matched detections."""
    found = total = unexplained = 0
    in_order = True
    scores_diff = boxes_diff = 0.0
    for ref, out in zip(reference, exported, strict=True):
        keys = (ref["queries"] * num_classes + ref["labels"]).tolist()
        theirs = {key: i for i, key in enumerate(
            (out["queries"] * num_classes + out["labels"]).tolist())}
        in_order = in_order and torch.equal(ref["labels"].cpu(), out["labels"].cpu())
        last = float(ref["scores"][-1]) if len(keys) else 0.0
        for i, key in enumerate(keys):
            total += 1
            j = theirs.get(key)
            if j is None:
                unexplained += abs(float(ref["scores"][i]) - last) > score_tolerance
                continue
            found += 1
            scores_diff = max(scores_diff, abs(float(ref["scores"][i]) - float(out["scores"][j])))
            boxes_diff = max(boxes_diff, _max_abs(ref["boxes"][i], out["boxes"][j]))
    return {"agreement": found / total if total else 1.0, "unexplained": unexplained,
            "labels_in_order": in_order, "scores_max_abs": scores_diff,
            "boxes_max_abs_px": boxes_diff}


def _batch_report(model: SAMDETR, runner: Runner, images: Sequence[Tensor],
                  post: PostProcess, tolerances: Mapping[str, float]) -> dict[str, Any]:
    batch, mask = pad_images(list(images))
    # Original sizes: each image as if resized from 1.5 times its size, as an eval transform
    # would have shrunk it.
    sizes = torch.tensor([[int(i.shape[1] * 1.5), int(i.shape[2] * 1.5)] for i in images])
    with torch.no_grad():
        reference = model(batch, mask)
    graph_post = "scores" in getattr(runner, "output_names", ())
    exported = runner(batch, mask, sizes if graph_post else None)
    if graph_post:
        theirs = [{k: exported[k][i] for k in ("scores", "labels", "boxes", "queries")}
                  for i in range(len(images))]
    else:
        theirs = post(exported, sizes)
    detections = compare_detections(post(reference, sizes), theirs,
                                    reference["pred_logits"].shape[-1], tolerances["scores"])
    return {"shape": list(batch.shape),
            "pred_logits_max_abs": _max_abs(reference["pred_logits"], exported["pred_logits"]),
            "pred_boxes_max_abs": _max_abs(reference["pred_boxes"], exported["pred_boxes"]),
            "postprocess": "graph" if graph_post else "PostProcess", **detections}


def _failures(row: Mapping[str, Any], tolerances: Mapping[str, float]) -> list[str]:
    limits = {"pred_logits_max_abs": tolerances["pred_logits"],
              "pred_boxes_max_abs": tolerances["pred_boxes"],
              "scores_max_abs": tolerances["scores"],
              "boxes_max_abs_px": tolerances["boxes_px"]}
    found = [f"{key} {row[key]:.3g} > {limit:.3g}" for key, limit in limits.items()
             if not row[key] <= limit]  # NaN fails too
    if row["unexplained"]:
        found.append(f"{row['unexplained']} top-k detections missing (not at a tie)")
    return [f"batch {row['shape']}: {text}" for text in found]


def parity_report(model: SAMDETR, runner: Runner, images: Sequence[Tensor],
                  num_top: int = 100,
                  tolerances: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Run ``model`` (eval mode, its own device and dtype left alone: pass a CPU float32 model)
    and ``runner`` on every image alone and on consecutive pairs padded together.

    Returns ``{"batches": [per batch: shape, max abs differences, detection agreement],
    "max": the worst of each number, "tolerances", "num_top", "passed", "failures"}``.
    """
    if not images:
        raise ValueError("parity_report needs at least one image")
    tolerances = {**TOLERANCES, **(tolerances or {})}
    post = PostProcess(num_top)
    model.eval()
    groups = [[image] for image in images] + [list(images[i:i + 2])
                                              for i in range(0, len(images) - 1, 2)]
    rows = [_batch_report(model, runner, group, post, tolerances) for group in groups]
    worst = {key: max(row[key] for row in rows) for key in (
        "pred_logits_max_abs", "pred_boxes_max_abs", "scores_max_abs", "boxes_max_abs_px",
        "unexplained")}
    worst["agreement"] = min(row["agreement"] for row in rows)
    failures = [text for row in rows for text in _failures(row, tolerances)]
    return {"batches": rows, "max": worst, "tolerances": tolerances, "num_top": num_top,
            "passed": not failures, "failures": failures}
