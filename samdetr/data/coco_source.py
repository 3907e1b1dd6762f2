"""A COCO instances JSON read and checked into a :class:`CocoSource` (images, annotations,
categories), before any image is opened.

Structural problems (missing sections, duplicate or non-integer ids, no categories) raise
ValueError; annotations naming an unknown image or category become box rejects (the reject
format is described in :mod:`samdetr.data.coco_rows`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from samdetr.data.coco_rows import make_reject, raise_on_rejects
from samdetr.data.storage import is_uri, resolve_fs

__all__ = ["CocoSource", "load_annotations", "source_from_document"]

_SECTIONS = ("images", "annotations", "categories")


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
    raw = _read(path, filesystem)
    return source_from_document(_parse_document(raw, path), path,
                                hashlib.sha256(raw).hexdigest(), strict)


def source_from_document(document: dict[str, Any], path: str, sha256: str,
                         strict: bool = False) -> CocoSource:
    """A :class:`CocoSource` of a COCO instances document already in memory (a dict with
    ``images``, ``annotations`` and ``categories`` lists), checked as :func:`load_annotations`
    checks a file. ``path`` names its origin in messages; ``sha256`` identifies its content."""
    for key in _SECTIONS:
        if not isinstance(document.get(key), list):
            raise ValueError(f"{path}: missing or non-list '{key}' (not a COCO instances file?)")
    categories = _categories(document["categories"], path)
    images = _images(document["images"], path)
    per_image, rejects = _group_annotations(document["annotations"], images, categories, path)
    source = CocoSource(
        path=path,
        images=[images[i] for i in sorted(images)],
        annotations=per_image,
        categories=[categories[c] for c in sorted(categories)],
        num_classes=max(categories) + 1,
        source_sha256=sha256,
        rejects=rejects,
    )
    if strict:
        raise_on_rejects(rejects, context=path)
    return source


def _read(path: str, filesystem: Any) -> bytes:
    if filesystem is None:
        with open(path, "rb") as f:
            return f.read()
    with filesystem.open_input_stream(path) as f:
        return f.read()


def _require_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value


def _parse_document(raw: bytes, path: str) -> dict[str, Any]:
    """The JSON object, checked to hold lists of objects under images/annotations/categories."""
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid JSON file ({exc})") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in _SECTIONS:
        if not isinstance(document.get(key), list):
            raise ValueError(f"{path}: missing or non-list '{key}' (not a COCO instances file?)")
        if not all(isinstance(item, dict) for item in document[key]):
            raise ValueError(f"{path}: every entry of '{key}' must be a JSON object")
    return document


def _categories(entries: list[dict[str, Any]], path: str) -> dict[int, dict[str, Any]]:
    """id -> ``{id, name, supercategory}``; ids are distinct non-negative ints, at least one."""
    categories: dict[int, dict[str, Any]] = {}
    for cat in entries:
        cid = _require_int(cat.get("id"), f"{path}: category id")
        if cid in categories:
            raise ValueError(f"{path}: duplicate category id {cid}")
        if cid < 0:
            raise ValueError(f"{path}: negative category id {cid}")
        categories[cid] = {"id": cid, "name": str(cat.get("name", "")),
                           "supercategory": str(cat.get("supercategory", ""))}  # fmt: skip
    if not categories:
        raise ValueError(f"{path}: no categories")
    return categories


def _images(entries: list[dict[str, Any]], path: str) -> dict[int, dict[str, Any]]:
    """id -> image info; ids are distinct ints and every image names a file."""
    images: dict[int, dict[str, Any]] = {}
    for info in entries:
        iid = _require_int(info.get("id"), f"{path}: image id")
        if iid in images:
            raise ValueError(f"{path}: duplicate image id {iid}")
        if not isinstance(info.get("file_name"), str) or not info["file_name"]:
            raise ValueError(f"{path}: image {iid} has no file_name")
        images[iid] = info
    return images


def _group_annotations(
    entries: list[dict[str, Any]],
    images: dict[int, dict[str, Any]],
    categories: dict[int, dict[str, Any]],
    path: str,
) -> tuple[dict[int, list[dict[str, Any]]], list[dict[str, Any]]]:
    """``(image id -> its annotations, rejects)``, both in annotation-id order."""
    per_image: dict[int, list[dict[str, Any]]] = {}
    rejects: list[dict[str, Any]] = []
    seen: set[int] = set()
    for ann in sorted(entries, key=lambda a: _require_int(a.get("id"), "annotation id")):
        aid = ann["id"]
        if aid in seen:
            raise ValueError(f"{path}: duplicate annotation id {aid}")
        seen.add(aid)
        iid = ann.get("image_id")
        info = images.get(iid) if isinstance(iid, int) else None
        if info is None:
            rejects.append(make_reject("box", iid, aid, None, f"unknown_image: image_id {iid!r}"))
            continue
        cid = ann.get("category_id")
        if cid not in categories:
            rejects.append(
                make_reject("box", iid, aid, info["file_name"], f"unknown_category: {cid!r}")
            )
            continue
        per_image.setdefault(iid, []).append(ann)
    return per_image, rejects
