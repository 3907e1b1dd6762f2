"""One COCO image and its annotations -> a validated row of plain Arrow types, and the rejects
and counters that report what was dropped (:mod:`samdetr.data.coco_source` reads the JSON).

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
``unreadable_image``, ``size_mismatch``, ``invalid_image_info`` (and, from the Pascal VOC reader,
``missing_annotation``, ``invalid_annotation``); box codes: ``unknown_image``,
``unknown_category``, ``degenerate_box``, ``box_outside_image``, ``invalid_box``. An image reject
carries ``num_annotations`` (its boxes are dropped with it). Partly-outside boxes are clipped and
kept (counter ``clipped_boxes``).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.fs as pafs
from PIL import Image

__all__ = [
    "COUNTER_KEYS", "encode_row", "local_reader", "filesystem_reader", "make_reject",
    "reason_code", "merge_counters", "raise_on_rejects",
]  # fmt: skip

_EXIF_ORIENTATION = 0x0112


#: Counter names returned by :func:`encode_row` (all ints, summable with :func:`merge_counters`).
COUNTER_KEYS: tuple[str, ...] = (
    "images", "images_kept", "images_rejected", "images_without_boxes", "boxes", "boxes_rejected",
    "clipped_boxes", "exif_transposed", "exif_ambiguous",
)  # fmt: skip


def make_reject(
    kind: str, image_id: Any, annotation_id: Any, file_name: Any, reason: str
) -> dict[str, Any]:
    """A reject dict (format in the module docstring); ``kind`` is "image" or "box"."""
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


class _Rejected(Exception):
    """An image or box that cannot be used; ``reason`` is its reject reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    image_id, file_name = image_info.get("id"), image_info.get("file_name")
    counters = dict.fromkeys(COUNTER_KEYS, 0)
    counters["images"] = 1
    try:
        size = _annotated_size(image_info)
        data = _read_image(read_bytes, file_name)
        mode, raw_size, orientation = _probe_image(data)
        exif_transpose, ambiguous = _orientation_choice(size, raw_size, orientation, prefer_exif)
    except _Rejected as exc:
        reject = make_reject("image", image_id, None, file_name, exc.reason)
        reject["num_annotations"] = len(anns)
        counters["images_rejected"] = 1
        if strict:
            raise_on_rejects([reject], context=f"image {image_id}")
        return None, [reject], counters

    columns, rejects, clipped = _box_columns(anns, image_id, file_name, size, categories)
    counters.update(
        images_kept=1, images_without_boxes=int(not columns["boxes"]),
        boxes=len(columns["boxes"]), boxes_rejected=len(rejects), clipped_boxes=clipped,
        exif_transposed=int(exif_transpose), exif_ambiguous=int(ambiguous),
    )  # fmt: skip
    if strict:
        raise_on_rejects(rejects, context=f"image {image_id} ({file_name})")
    row = {
        "image_id": image_id, "file_name": file_name, "width": size[0], "height": size[1],
        "image": data, "exif_transpose": bool(exif_transpose), "mode": mode, **columns,
    }  # fmt: skip
    return row, rejects, counters


def _annotated_size(image_info: Mapping[str, Any]) -> tuple[int, int]:
    """The info's ``(width, height)``; _Rejected unless id, file_name and a positive size are
    all given."""
    image_id, file_name = image_info.get("id"), image_info.get("file_name")
    width, height = image_info.get("width"), image_info.get("height")
    if (
        not isinstance(image_id, int)
        or not isinstance(file_name, str)
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)
        )
    ):
        raise _Rejected(
            f"invalid_image_info: id={image_id!r} file_name={file_name!r} "
            f"width={width!r} height={height!r}"
        )
    return width, height


def _read_image(read_bytes: Callable[[str], bytes], file_name: str) -> bytes:
    """The file's bytes; _Rejected when missing, unreadable or empty. A reader returning
    something other than bytes is a programming error (TypeError), not a bad image."""
    try:
        data = read_bytes(file_name)
    except FileNotFoundError:
        raise _Rejected("missing_image") from None
    except OSError as exc:
        raise _Rejected(f"unreadable_image: {type(exc).__name__}: {exc}") from exc
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError(f"read_bytes({file_name!r}) returned {type(data).__name__}, not bytes")
    if not data:
        raise _Rejected("unreadable_image: empty file")
    return data


def _probe_image(data: bytes) -> tuple[str, tuple[int, int], int]:
    """Fully decode ``data``; return (mode, raw (width, height), EXIF orientation or 1).

    Any decoder failure (truncated or corrupt data raise only in the full decode) is _Rejected.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
            except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
                orientation = 1
            im.load()
            raw_size = im.size
    except Exception as exc:  # noqa: BLE001 - any decoder failure means an unusable image
        raise _Rejected(f"unreadable_image: {type(exc).__name__}: {exc}") from exc
    if orientation not in range(1, 9):
        orientation = 1
    return mode, raw_size, orientation


def _orientation_choice(
    size: tuple[int, int], raw_size: tuple[int, int], orientation: int, prefer_exif: bool
) -> tuple[bool, bool]:
    """``(exif_transpose, ambiguous)`` from which of the file's sizes the annotation's ``size``
    matches: the EXIF-oriented one, the raw one, or both; _Rejected (size_mismatch) for neither."""
    raw_w, raw_h = raw_size
    oriented = (raw_h, raw_w) if orientation >= 5 else (raw_w, raw_h)
    matches_exif = orientation != 1 and size == oriented
    matches_raw = size == raw_size
    if matches_exif and matches_raw:
        return prefer_exif, True
    if matches_exif or matches_raw:
        return matches_exif, False
    extra = f" (EXIF orientation {orientation})" if orientation != 1 else ""
    raise _Rejected(
        f"size_mismatch: annotation {size[0]}x{size[1]} vs image {raw_w}x{raw_h}{extra}"
    )


def _box_columns(
    anns: Sequence[Mapping[str, Any]],
    image_id: int,
    file_name: str,
    size: tuple[int, int],
    categories: set[int] | frozenset[int],
) -> tuple[dict[str, list], list[dict[str, Any]], int]:
    """``(columns, rejects, clipped)`` of an accepted image's annotations (in the given order).

    ``columns``: the row's parallel lists boxes, category_ids, iscrowd, area, annotation_ids.
    ``clipped`` counts every clipped box, also one rejected afterwards for its iscrowd or area.
    """
    columns: dict[str, list] = {
        "boxes": [], "category_ids": [], "iscrowd": [], "area": [], "annotation_ids": []
    }  # fmt: skip
    rejects: list[dict[str, Any]] = []
    clipped = 0
    for ann in anns:
        try:
            category = _annotation_category(ann, image_id, categories)
            box, was_clipped = _clip_box(ann.get("bbox"), size)
            clipped += was_clipped
            iscrowd, area = _crowd_and_area(ann, box)
        except _Rejected as exc:
            rejects.append(make_reject("box", image_id, ann["id"], file_name, exc.reason))
            continue
        columns["boxes"].append([float(v) for v in np.asarray(box, dtype=np.float32)])
        columns["category_ids"].append(category)
        columns["iscrowd"].append(iscrowd)
        columns["area"].append(area)
        columns["annotation_ids"].append(int(ann["id"]))
    return columns, rejects, clipped


def _annotation_category(
    ann: Mapping[str, Any], image_id: int, categories: set[int] | frozenset[int]
) -> int:
    """The annotation's category id; _Rejected when it names another image or an unknown
    category."""
    if ann.get("image_id", image_id) != image_id:
        raise _Rejected(f"unknown_image: annotation names image {ann.get('image_id')!r}")
    cid = ann.get("category_id")
    if cid not in categories:
        raise _Rejected(f"unknown_category: {cid!r}")
    return int(cid)


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


def _clip_box(bbox: Any, size: tuple[int, int]) -> tuple[list[float], bool]:
    """``([x, y, w, h] inside the image, whether it was clipped)`` for a COCO bbox in pixels;
    _Rejected when malformed, degenerate (w or h <= 0) or entirely outside the image."""
    values = _box_values(bbox)
    if values is None:
        raise _Rejected(f"invalid_box: bbox {bbox!r}")
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise _Rejected(f"degenerate_box: w={w} h={h}")
    width, height = size
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x2 <= x1 or y2 <= y1:
        raise _Rejected(f"box_outside_image: [{x}, {y}, {w}, {h}] in {width}x{height}")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        return [x1, y1, x2 - x1, y2 - y1], True
    return [x, y, w, h], False


def _crowd_and_area(ann: Mapping[str, Any], box: Sequence[float]) -> tuple[int, float]:
    """``(iscrowd 0/1, area as a float32 value)``; a missing area is the (clipped) box's w*h.
    _Rejected for an iscrowd other than 0/1 or a negative / non-finite area."""
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):  # also accepts True/False
        raise _Rejected(f"invalid_box: iscrowd {iscrowd!r}")
    area = ann.get("area", box[2] * box[3])
    try:
        area = float(area)
    except (TypeError, ValueError):
        area = math.nan
    if not math.isfinite(area) or area < 0:
        raise _Rejected(f"invalid_box: area {ann.get('area')!r}")
    return int(iscrowd), float(np.float32(area))
