"""End-to-end inference: encoded bytes or PIL images of any size -> detections in their pixels.

    predictor = Predictor.from_checkpoint("checkpoint.pth")
    results = predictor([jpeg_bytes, pil_image])          # one dict per image, input order
    table = detections_table(results, predictor.category_names)

    onnx = Predictor.from_exported("detector.onnx")       # the same, in ONNX Runtime

Images are batched only with images of the same preprocessed shape. Zero-padding a smaller image
into a batch changes the ResNet features near its bottom/right border (convolutions then see
padded activations instead of their own zero padding), so padded batches give slightly different
detections from running each image alone; same-shape batches give the same ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from torch import Tensor

from samdetr.batching import pad_images
from samdetr.checkpoint import load_checkpoint
from samdetr.data.images import decode_image, to_rgb
from samdetr.data.transforms import eval_transforms
from samdetr.model.detector import SAMDETR
from samdetr.model.postprocess import PostProcess

__all__ = ["Predictor", "detections_table"]

TABLE_COLUMNS = ("image_index", "score", "label", "name", "x1", "y1", "x2", "y2")
# Images preprocessed at once = this many batches: bounds memory for long inputs while still
# letting same-shape images from different positions share a batch.
_WINDOW_BATCHES = 8


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _eval_sizes(transform: Any, where: str) -> dict[str, Any]:
    """``eval_size`` / ``max_size`` keyword arguments from a stored eval transform (``{"size":
    int, "max_size": int}``; None: none), or a ValueError naming ``where``."""
    if transform is None:
        return {}
    if not isinstance(transform, Mapping) or "size" not in transform:
        raise ValueError(f"{where} must be a dict with 'size' (and optionally 'max_size'), "
                         f"got {transform!r}")
    sizes = {"eval_size": transform["size"]}
    if transform.get("max_size") is not None:
        sizes["max_size"] = transform["max_size"]
    return sizes


class Predictor:
    """Runs a SAM-DETR model on images of any size and returns detections in their pixels.

    Args:
        model: the detector; it is moved to ``device`` (in place) and put in eval mode. Or an
            exported one (:func:`samdetr.export.runtime.open_exported`: ONNX Runtime or an
            ExportedProgram), which runs on the CPU and gives no salient points (``points``
            has M = 0).
        eval_size: shorter side the images are resized to (the training eval transform's size).
        max_size: upper bound of the longer side after resizing.
        num_top: (query, class) pairs kept per image, as in :class:`PostProcess`.
        device: where the model runs; inputs are moved there and results come back on the CPU.
        batch_size: most images per forward pass.
        category_names: optional ``{category id: name}`` used by :func:`detections_table`.
    """

    def __init__(
        self,
        model: SAMDETR,
        eval_size: int = 800,
        max_size: int = 1333,
        num_top: int = 100,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
        category_names: Mapping[int, str] | None = None,
    ) -> None:
        self.exported = not isinstance(model, torch.nn.Module)
        if self.exported and not (callable(model) and hasattr(model, "input_names")):
            raise TypeError(f"model must be a SAMDETR module or an exported detector "
                            f"(samdetr.export.runtime), got {type(model).__name__}")
        self.eval_size = _positive_int("eval_size", eval_size)
        self.max_size = _positive_int("max_size", max_size)
        self.num_top = _positive_int("num_top", num_top)
        self.batch_size = _positive_int("batch_size", batch_size)
        if category_names is not None and not isinstance(category_names, Mapping):
            raise TypeError(
                "category_names must be a mapping {id: name}, got "
                f"{type(category_names).__name__}"
            )
        self.category_names = {int(k): str(v) for k, v in (category_names or {}).items()}
        self.device = torch.device(device)
        if self.exported and self.device.type != "cpu":
            raise ValueError(f"an exported model runs on the CPU here, not {self.device}")
        self.model = model if self.exported else model.to(self.device).eval()
        self.transform = eval_transforms(self.eval_size, self.max_size)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({'exported, ' if self.exported else ''}"
            f"eval_size={self.eval_size}, max_size={self.max_size}, "
            f"num_top={self.num_top}, device={str(self.device)!r}, batch_size={self.batch_size}, "
            f"{len(self.category_names)} category names)"
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", **overrides: Any
    ) -> Predictor:
        """Build a predictor from a :func:`samdetr.checkpoint.save_checkpoint` file.

        ``eval_size``/``max_size`` come from the checkpoint's ``eval_transform`` entry
        (``{"size": int, "max_size": int}``) and ``category_names`` from its ``categories``
        (``[{"id": int, "name": str}, ...]``) when present; keyword ``overrides`` win over both.
        """
        model, _, extra = load_checkpoint(path, map_location="cpu")  # moved in __init__
        kwargs = _eval_sizes(extra.get("eval_transform"), f"{path}: eval_transform")
        categories = extra.get("categories")
        if categories is not None:
            try:
                kwargs["category_names"] = {int(c["id"]): str(c["name"]) for c in categories}
            except (TypeError, KeyError, ValueError) as err:
                raise ValueError(
                    f"{path}: categories must be a list of {{'id': int, 'name': str}} dicts, "
                    f"got {categories!r:.200}"
                ) from err
        kwargs.update(overrides)
        return cls(model, device=device, **kwargs)

    @classmethod
    def from_exported(cls, path: str | Path, **overrides: Any) -> Predictor:
        """Build a predictor on an exported file (``.onnx`` in ONNX Runtime, ``.pt2`` as an
        ExportedProgram; :func:`samdetr.export.exporter.export_model` writes them), on the CPU.

        ``eval_size``/``max_size`` come from the file's ``samdetr.eval_transform`` metadata
        and ``category_names`` from its ``samdetr.categories`` when present (``python -m
        pipelines.export`` stores both); keyword ``overrides`` win over both."""
        from samdetr.export.runtime import open_exported

        runner = open_exported(path)
        try:
            transform = json.loads(runner.metadata.get("samdetr.eval_transform") or "null")
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: samdetr.eval_transform is not JSON: {err}") from err
        kwargs = _eval_sizes(transform, f"{path}: samdetr.eval_transform")
        if runner.categories:
            kwargs["category_names"] = runner.categories
        kwargs.update(overrides)
        return cls(runner, **kwargs)

    # ------------------------------------------------------------------------- preprocessing
    def _to_rgb(self, index: int, item: Any, exif_transpose: bool) -> Image.Image:
        if isinstance(item, (bytes, bytearray, memoryview)):
            try:
                return decode_image(bytes(item), exif_transpose=exif_transpose)
            except ValueError as err:
                raise ValueError(f"image {index}: {err}") from err
        if isinstance(item, Image.Image):
            if exif_transpose:
                item = ImageOps.exif_transpose(item)
            return to_rgb(item)
        hint = (
            " (a file path? read its bytes or open it with PIL.Image.open)"
            if isinstance(item, (str, Path))
            else ""
        )
        raise TypeError(
            f"image {index} must be encoded image bytes or a PIL.Image, "
            f"got {type(item).__name__}{hint}"
        )

    def _preprocess(self, index: int, item: Any, exif_transpose: bool) -> tuple[Tensor, Tensor]:
        """One image -> (normalised (3, h, w) tensor, original (height, width) int64)."""
        image = self._to_rgb(index, item, exif_transpose)
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"image {index} is empty ({width}x{height} pixels)")
        # The eval transform also maps boxes; an empty target keeps it to the image.
        target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
        tensor, _ = self.transform(image, target, generator=None)
        return tensor, torch.tensor([height, width], dtype=torch.int64)

    # ------------------------------------------------------------------------- inference
    @torch.no_grad()
    def _run(self, tensors: list[Tensor], sizes: list[Tensor], num_top: int,
             clip_boxes: bool = True) -> list[dict]:
        """Same-shape images -> one result dict each (on the CPU)."""
        batch, mask = pad_images(tensors)  # no padding: callers group images by shape
        target_sizes = torch.stack(sizes).to(self.device)
        if self.exported:  # a graph with its own post-processing takes the sizes too
            takes_sizes = "orig_sizes" in self.model.input_names
            outputs = self.model(batch, mask, target_sizes if takes_sizes else None)
        else:
            outputs = self.model(batch.to(self.device), mask.to(self.device))
        results = PostProcess(num_top)(outputs, target_sizes)
        logits = outputs["pred_logits"]
        points = outputs.get("salient_points")  # (B, Q, M, 2); absent for the baseline decoder
        if points is None:
            points = logits.new_zeros(*logits.shape[:2], 0, 2)
        out = []
        for result, size, pts in zip(results, target_sizes, points, strict=True):
            pts = pts[result["queries"]]  # (k, M, 2): the salient points of each detection
            # Predicted boxes may reach past the border; a caller wants pixels inside the image
            # (COCO evaluation, as the official code's, takes them unclipped).
            boxes = result["boxes"]
            if clip_boxes:
                height, width = size.to(boxes.dtype).unbind()
                limits = torch.stack([width, height, width, height])
                boxes = torch.minimum(boxes.clamp(min=0), limits)
            out.append(
                {
                    "scores": result["scores"].cpu(),
                    "labels": result["labels"].cpu(),
                    "boxes": boxes.cpu(),
                    "points": pts.cpu(),
                }
            )
        return out

    def __call__(
        self,
        images: Sequence[Image.Image | bytes | bytearray],
        exif_transpose: bool = True,
        *,
        num_top: int | None = None,
        clip_boxes: bool = True,
    ) -> list[dict[str, Tensor]]:
        """Detect objects in ``images``.

        Args:
            images: a list or tuple of encoded images (JPEG, PNG, ... bytes) and/or PIL images
                of any size and mode (grayscale, RGBA, 16-bit, ... are converted to RGB).
            exif_transpose: apply the EXIF orientation first, so that boxes refer to the image
                as a viewer shows it (off: the stored pixel orientation).
            num_top: detections per image for this call instead of ``self.num_top``.
            clip_boxes: clip the boxes to the image (off: as predicted, which may reach past the
                border; COCO evaluation scores them so, as the training-time evaluation does).
        Returns:
            One dict per image, in input order: ``scores`` (k,) descending, ``labels`` (k,) int64
            category ids, ``boxes`` (k, 4) absolute (x1, y1, x2, y2) pixels of the (oriented)
            original image (clipped to it unless ``clip_boxes`` is off), ``points`` (k, M, 2)
            the salient points of each detection's query, normalised (x, y) relative to the
            image (M = 0 for the baseline decoder); k = min(num_top, Q * K). An empty
            ``images`` gives an empty list.
        """
        if isinstance(images, (bytes, bytearray, memoryview, Image.Image, str)) or not isinstance(
            images, Sequence
        ):
            raise TypeError(
                f"images must be a list of encoded image bytes or PIL images, got "
                f"{type(images).__name__}; wrap a single image in a list"
            )
        num_top = self.num_top if num_top is None else _positive_int("num_top", num_top)
        results: list[dict[str, Tensor] | None] = [None] * len(images)
        window = self.batch_size * _WINDOW_BATCHES
        for start in range(0, len(images), window):
            groups: dict[tuple[int, ...], list[tuple[int, Tensor, Tensor]]] = {}
            for index in range(start, min(start + window, len(images))):
                tensor, size = self._preprocess(index, images[index], exif_transpose)
                groups.setdefault(tuple(tensor.shape), []).append((index, tensor, size))
            for members in groups.values():
                for first in range(0, len(members), self.batch_size):
                    chunk = members[first : first + self.batch_size]
                    outs = self._run([m[1] for m in chunk], [m[2] for m in chunk], num_top,
                                     clip_boxes)
                    for (index, _, _), out in zip(chunk, outs, strict=True):
                        results[index] = out
        return results  # type: ignore[return-value]


def detections_table(
    results: Sequence[Mapping[str, Tensor]], category_names: Mapping[int, str] | None = None
) -> dict[str, list]:
    """Flatten :class:`Predictor` results into columns, one row per detection.

    Columns: ``image_index`` (position of the image in the input), ``score``, ``label``
    (category id), ``name`` (from ``category_names``, ``""`` when unknown) and the box
    ``x1, y1, x2, y2`` in the original image's pixels. Images without detections add no rows.
    """
    if isinstance(results, Mapping) or not isinstance(results, Sequence):
        raise TypeError(f"results must be a list of per-image dicts, got {type(results).__name__}")
    names = category_names or {}
    table: dict[str, list] = {column: [] for column in TABLE_COLUMNS}
    for image_index, result in enumerate(results):
        missing = {"scores", "labels", "boxes"} - set(result)
        if missing:
            raise ValueError(f"result {image_index} lacks {sorted(missing)}")
        boxes = result["boxes"].reshape(-1, 4).tolist()
        scores, labels = result["scores"].tolist(), result["labels"].tolist()
        if not len(scores) == len(labels) == len(boxes):
            raise ValueError(
                f"result {image_index}: {len(scores)} scores, {len(labels)} labels and "
                f"{len(boxes)} boxes must match"
            )
        for score, label, (x1, y1, x2, y2) in zip(scores, labels, boxes, strict=True):
            table["image_index"].append(image_index)
            table["score"].append(float(score))
            table["label"].append(int(label))
            table["name"].append(names.get(int(label), ""))
            for column, value in zip(("x1", "y1", "x2", "y2"), (x1, y1, x2, y2), strict=True):
                table[column].append(float(value))
    return table
