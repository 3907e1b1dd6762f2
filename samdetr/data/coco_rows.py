"""COCO instances JSON -> validated per-image rows of plain Arrow types.

One row per image (see :data:`ROW_SCHEMA`)::

    image_id        int64
    file_name       string                  # as in the JSON, relative to the image folder
    width, height   int32                   # the annotation's size = size after `exif_transpose`
    image           binary                  # the ORIGINAL encoded file bytes (JPEG/PNG/...)
    exif_transpose  bool                    # decoders must apply the EXIF orientation
    mode            string                  # PIL mode of the file: L, RGB, CMYK, RGBA, I;16, P...
    boxes           list<list<float32>>     # each [x, y, w, h] in pixels of the oriented image
    category_ids    list<int32>             # COCO category ids (not contiguous)
    iscrowd         list<int8>              # 0 or 1
    area            list<float32>           # the annotation's area (segment area in COCO)
    annotation_ids  list<int64>

Boxes use ``list<list<float32>>`` (inner lists always of length 4) rather than
``fixed_size_list``: every Parquet reader understands nested lists. The box lists of one row are
parallel and in annotation-id order. Images without boxes are kept.

Problems are reported, never silently dropped: each reject is a dict::

    {"kind": "image" | "box", "image_id": int | None, "annotation_id": int | None,
     "file_name": str | None, "reason": str}

``reason`` is a code, optionally followed by ``": detail"``. Image codes: ``missing_image``,
``unreadable_image``, ``size_mismatch``, ``invalid_image_info``; box codes: ``unknown_image``,
``unknown_category``, ``degenerate_box``, ``box_outside_image``, ``invalid_box``. An image reject
carries ``num_annotations`` (its boxes are dropped with it). Partly-outside boxes are clipped and
kept (counter ``clipped_boxes``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.fs as pafs
from PIL import Image

from samdetr.data.storage import is_uri, resolve_fs

__all__ = [
    "COUNTER_KEYS", "CocoSource", "load_annotations", "encode_row", "local_reader",
    "filesystem_reader", "reason_code", "merge_counters", "raise_on_rejects",
]  # fmt: skip

_EXIF_ORIENTATION = 0x0112


#: Counter names returned by :func:`encode_row` (all ints, summable with :func:`merge_counters`).
COUNTER_KEYS: tuple[str, ...] = (
    "images", "images_kept", "images_rejected", "images_without_boxes", "boxes", "boxes_rejected",
    "clipped_boxes", "exif_transposed", "exif_ambiguous",
)  # fmt: skip


@dataclass
class CocoSource:
    """A parsed COCO instances file.

    ``images``: image infos (dicts with at least id, file_name, width, height) sorted by id.
    ``annotations``: image id -> that image's annotation dicts sorted by annotation id (only
    annotations naming a known image and a known category). ``categories``: [{id, name,
    supercategory}] sorted by id. ``num_classes``: max category id + 1 (K). ``rejects``: box
    rejects (``unknown_image`` / ``unknown_category``) in annotation-id order.
    """

    path: str
    images: list[dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]
    categories: list[dict[str, Any]]
    num_classes: int
    source_sha256: str
    rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def category_ids(self) -> set[int]:
        return {c["id"] for c in self.categories}

    def items(self) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Yield ``(image_info, annotations)`` in image-id order."""
        for info in self.images:
            yield info, self.annotations.get(info["id"], [])


def _require_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value


def load_annotations(
    path: str | os.PathLike[str], filesystem: Any = None, strict: bool = False
) -> CocoSource:
    """Read a COCO instances JSON: a local path, a URI (``s3://bucket/annotations.json``) or a
    path on the ``pyarrow.fs.FileSystem`` given as ``filesystem``.

    Annotations naming an unknown image or category become rejects (ValueError when
    ``strict``). Structural problems (missing sections, duplicate image / annotation /
    category ids, non-integer ids, no categories) raise ValueError.
    """
    path = os.fspath(path)
    if filesystem is None and is_uri(path):
        filesystem, path = resolve_fs(path)
    if filesystem is None:
        with open(path, "rb") as f:
            raw = f.read()
    else:
        with filesystem.open_input_stream(path) as f:
            raw = f.read()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing or non-list '{key}' (not a COCO instances file?)")
        if not all(isinstance(item, dict) for item in data[key]):
            raise ValueError(f"{path}: every entry of '{key}' must be a JSON object")

    categories: dict[int, dict[str, Any]] = {}
    for cat in data["categories"]:
        cid = _require_int(cat.get("id"), f"{path}: category id")
        if cid in categories:
            raise ValueError(f"{path}: duplicate category id {cid}")
        if cid < 0:
            raise ValueError(f"{path}: negative category id {cid}")
        categories[cid] = {"id": cid, "name": str(cat.get("name", "")),
                           "supercategory": str(cat.get("supercategory", ""))}  # fmt: skip
    if not categories:
        raise ValueError(f"{path}: no categories")

    images: dict[int, dict[str, Any]] = {}
    for info in data["images"]:
        iid = _require_int(info.get("id"), f"{path}: image id")
        if iid in images:
            raise ValueError(f"{path}: duplicate image id {iid}")
        if not isinstance(info.get("file_name"), str) or not info["file_name"]:
            raise ValueError(f"{path}: image {iid} has no file_name")
        images[iid] = info

    per_image: dict[int, list[dict[str, Any]]] = {}
    rejects: list[dict[str, Any]] = []
    seen_ann: set[int] = set()
    for ann in sorted(
        data["annotations"], key=lambda a: _require_int(a.get("id"), "annotation id")
    ):
        aid = ann["id"]
        if aid in seen_ann:
            raise ValueError(f"{path}: duplicate annotation id {aid}")
        seen_ann.add(aid)
        iid = ann.get("image_id")
        info = images.get(iid) if isinstance(iid, int) else None
        if info is None:
            rejects.append(_reject("box", iid, aid, None, f"unknown_image: image_id {iid!r}"))
            continue
        cid = ann.get("category_id")
        if cid not in categories:
            rejects.append(
                _reject("box", iid, aid, info["file_name"], f"unknown_category: {cid!r}")
            )
            continue
        per_image.setdefault(iid, []).append(ann)

    source = CocoSource(
        path=path,
        images=[images[i] for i in sorted(images)],
        annotations=per_image,
        categories=[categories[c] for c in sorted(categories)],
        num_classes=max(categories) + 1,
        source_sha256=hashlib.sha256(raw).hexdigest(),
        rejects=rejects,
    )
    if strict:
        raise_on_rejects(rejects, context=path)
    return source


def _reject(kind: str, image_id: Any, annotation_id: Any, file_name: Any, reason: str) -> dict:
    return {"kind": kind, "image_id": image_id, "annotation_id": annotation_id,
            "file_name": file_name, "reason": reason}  # fmt: skip


def reason_code(reject: Mapping[str, Any]) -> str:
    """The code part of a reject's reason (text before the first ':')."""
    return str(reject["reason"]).split(":", 1)[0]


def raise_on_rejects(rejects: Sequence[Mapping[str, Any]], context: str = "input") -> None:
    """Raise ValueError describing ``rejects`` if there are any (the ``strict`` policy)."""
    if not rejects:
        return
    shown = "; ".join(
        f"{r['kind']} image_id={r.get('image_id')} annotation_id={r.get('annotation_id')}"
        f" file={r.get('file_name')}: {r['reason']}"
        for r in rejects[:10]
    )
    more = f" (and {len(rejects) - 10} more)" if len(rejects) > 10 else ""
    raise ValueError(f"strict mode: {len(rejects)} rejected item(s) in {context}: {shown}{more}")


def merge_counters(total: dict[str, int], counters: Mapping[str, int]) -> dict[str, int]:
    """Add ``counters`` into ``total`` in place (missing keys start at 0) and return it."""
    for key, value in counters.items():
        total[key] = total.get(key, 0) + int(value)
    return total


def local_reader(image_dir: str | os.PathLike[str]) -> Callable[[str], bytes]:
    """A ``read_bytes`` for :func:`encode_row`: reads ``image_dir / file_name``."""
    root = os.fspath(image_dir)

    def read(file_name: str) -> bytes:
        with open(os.path.join(root, file_name), "rb") as f:
            return f.read()

    return read


def filesystem_reader(filesystem: Any, image_dir: str) -> Callable[[str], bytes]:
    """A ``read_bytes`` reading ``image_dir/file_name`` from a ``pyarrow.fs.FileSystem``.

    A missing file raises FileNotFoundError on every filesystem (so it counts as missing).
    """
    root = image_dir.rstrip("/")

    def read(file_name: str) -> bytes:
        path = f"{root}/{file_name}"
        try:
            with filesystem.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError:
            if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
                raise FileNotFoundError(path) from None
            raise

    return read


def _probe_image(data: bytes) -> tuple[str, int, int, int]:
    """Fully decode ``data``; return (mode, raw width, raw height, EXIF orientation or 1)."""
    with Image.open(io.BytesIO(data)) as im:
        mode = im.mode
        try:
            orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
        except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
            orientation = 1
        im.load()  # full decode: truncated/corrupt data raises here
        width, height = im.size
    if orientation not in range(1, 9):
        orientation = 1
    return mode, width, height, orientation


def _box_values(bbox: Any) -> list[float] | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        return None
    if isinstance(bbox[0], bool) or not all(math.isfinite(v) for v in values):
        return None
    return values


def encode_row(
    image_info: Mapping[str, Any],
    annotations: Iterable[Mapping[str, Any]],
    read_bytes: Callable[[str], bytes],
    categories: set[int] | frozenset[int],
    *,
    prefer_exif: bool = True,
    strict: bool = False,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], dict[str, int]]:
    """Validate one image and its annotations; return ``(row or None, rejects, counters)``.

    ``read_bytes(file_name)`` returns the original file bytes (FileNotFoundError when missing).
    The bytes are fully decoded with PIL to catch truncated/corrupt files. The annotation's
    width/height decide ``exif_transpose``: equal to the EXIF-oriented size -> True, equal to
    the raw size -> False, both (orientation 2-4, or square) -> ``prefer_exif`` (counted as
    ``exif_ambiguous``), neither -> the image is rejected (``size_mismatch``). Box values are
    stored as float32; clipping happens only for boxes reaching outside the image.
    ``strict`` raises ValueError instead of returning rejects.
    """
    if not callable(read_bytes):
        raise TypeError(f"read_bytes must be a callable file_name -> bytes, got {read_bytes!r}")
    anns = sorted(annotations, key=lambda a: a["id"])
    counters = dict.fromkeys(COUNTER_KEYS, 0)
    counters["images"] = 1
    image_id = image_info.get("id")
    file_name = image_info.get("file_name")

    def reject_image(reason: str) -> tuple[None, list[dict[str, Any]], dict[str, int]]:
        rej = _reject("image", image_id, None, file_name, reason)
        rej["num_annotations"] = len(anns)
        counters["images_rejected"] = 1
        if strict:
            raise_on_rejects([rej], context=f"image {image_id}")
        return None, [rej], counters

    width, height = image_info.get("width"), image_info.get("height")
    if (
        not isinstance(image_id, int)
        or not isinstance(file_name, str)
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)
        )
    ):
        return reject_image(
            f"invalid_image_info: id={image_id!r} file_name={file_name!r} "
            f"width={width!r} height={height!r}"
        )
    try:
        data = read_bytes(file_name)
    except FileNotFoundError:
        return reject_image("missing_image")
    except OSError as exc:
        return reject_image(f"unreadable_image: {type(exc).__name__}: {exc}")
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"read_bytes({file_name!r}) returned {type(data).__name__}, not bytes")
    if not data:
        return reject_image("unreadable_image: empty file")
    try:
        mode, raw_w, raw_h, orientation = _probe_image(data)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means an unusable image
        return reject_image(f"unreadable_image: {type(exc).__name__}: {exc}")

    oriented = (raw_h, raw_w) if orientation >= 5 else (raw_w, raw_h)
    matches_exif = orientation != 1 and (width, height) == oriented
    matches_raw = (width, height) == (raw_w, raw_h)
    if matches_exif and matches_raw:
        exif_transpose = prefer_exif
        counters["exif_ambiguous"] = 1
    elif matches_exif or matches_raw:
        exif_transpose = matches_exif
    else:
        extra = f" (EXIF orientation {orientation})" if orientation != 1 else ""
        return reject_image(
            f"size_mismatch: annotation {width}x{height} vs image {raw_w}x{raw_h}{extra}"
        )
    counters["exif_transposed"] = int(exif_transpose)

    rejects: list[dict[str, Any]] = []
    kept: list[tuple[list[float], int, int, float, int]] = []  # box, category, crowd, area, id
    for ann in anns:
        aid = ann["id"]

        def reject_box(reason: str, aid: Any = aid) -> None:
            rejects.append(_reject("box", image_id, aid, file_name, reason))

        if ann.get("image_id", image_id) != image_id:
            reject_box(f"unknown_image: annotation names image {ann.get('image_id')!r}")
            continue
        cid = ann.get("category_id")
        if cid not in categories:
            reject_box(f"unknown_category: {cid!r}")
            continue
        values = _box_values(ann.get("bbox"))
        if values is None:
            reject_box(f"invalid_box: bbox {ann.get('bbox')!r}")
            continue
        x, y, w, h = values
        if w <= 0 or h <= 0:
            reject_box(f"degenerate_box: w={w} h={h}")
            continue
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if x2 <= x1 or y2 <= y1:
            reject_box(f"box_outside_image: [{x}, {y}, {w}, {h}] in {width}x{height}")
            continue
        if x < 0 or y < 0 or x + w > width or y + h > height:
            counters["clipped_boxes"] += 1
            x, y, w, h = x1, y1, x2 - x1, y2 - y1
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1):  # also accepts True/False
            reject_box(f"invalid_box: iscrowd {iscrowd!r}")
            continue
        area = ann.get("area", w * h)
        try:
            area = float(area)
        except (TypeError, ValueError):
            area = math.nan
        if not math.isfinite(area) or area < 0:
            reject_box(f"invalid_box: area {ann.get('area')!r}")
            continue
        box = [float(v) for v in np.asarray([x, y, w, h], dtype=np.float32)]
        kept.append((box, int(cid), int(iscrowd), float(np.float32(area)), int(aid)))

    boxes, cats, crowd, areas, ann_ids = (
        (list(col) for col in zip(*kept, strict=True)) if kept else ([], [], [], [], [])
    )
    counters["images_kept"] = 1
    counters["boxes"] = len(boxes)
    counters["boxes_rejected"] = len(rejects)
    counters["images_without_boxes"] = int(not boxes)
    if strict:
        raise_on_rejects(rejects, context=f"image {image_id} ({file_name})")
    row = {
        "image_id": image_id, "file_name": file_name, "width": width, "height": height,
        "image": data, "exif_transpose": bool(exif_transpose), "mode": mode, "boxes": boxes,
        "category_ids": cats, "iscrowd": crowd, "area": areas, "annotation_ids": ann_ids,
    }  # fmt: skip
    return row, rejects, counters
