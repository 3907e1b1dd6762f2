"""The annotation formats preprocessing reads (``data.format``), and reading one split of any of
them into the :class:`~samdetr.data.coco_source.CocoSource` that shards are made from.

=========  =================================================  =================================
format     reads                                              the library's reader
=========  =================================================  =================================
``coco``   ``data.annotations`` (instances JSON),             :mod:`samdetr.data.coco_source`
           ``data.images`` (the folder its file names are in)
``yolo``   ``data.annotations`` (the dataset YAML: classes,   :mod:`samdetr.data.yolo_source`
           splits, the root the images are under)
``voc``    ``data.root`` (Annotations/, JPEGImages/,          :mod:`samdetr.data.voc_source`
           ImageSets/Main/), ``data.classes`` (optional)
=========  =================================================  =================================

For ``yolo`` and ``voc`` the run's ``split`` also picks what is read (the YAML's split, the file
``ImageSets/Main/<split>.txt``); for ``coco`` it only names the shards. Whatever the format, the
shards and the manifest are those of a COCO file with the same labels.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from pipelines.common.checks import non_empty
from samdetr.data.coco_source import CocoSource, load_annotations
from samdetr.data.storage import is_uri, resolve_fs
from samdetr.data.voc_source import load_voc
from samdetr.data.yolo_source import load_yolo

#: Each format and the source settings (keys of the ``data`` node) it reads.
FORMATS: dict[str, tuple[str, ...]] = {
    "coco": ("annotations", "images"),
    "yolo": ("annotations",),
    "voc": ("root", "classes"),
}
#: What each source setting is, for messages.
_MEANING = {
    "annotations": {"coco": "the COCO instances JSON", "yolo": "the YOLO dataset YAML"},
    "images": {"coco": "the folder the JSON's file names are relative to"},
    "root": {"voc": "the VOC folder holding Annotations/, JPEGImages/ and ImageSets/Main/"},
}


@dataclass(frozen=True)
class SplitSource:
    """One split read: its ``source``, and where its images are: ``fs`` and ``images_dir``
    (the folder on it the source's file names are relative to) here, ``images_uri`` for Ray
    workers (a URI stays a URI, so that each worker opens the store itself)."""

    source: CocoSource
    fs: pafs.FileSystem
    images_dir: str
    images_uri: str


def source_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing settings a ``data`` config node gives: ``format`` (default ``coco``),
    the keys that format reads, and ``classes`` (only ``voc`` reads it, so a stray one is an
    error, not ignored). The node's other keys are not preprocessing's: its name, the shards
    training reads, and the COCO paths a data group keeps when another format is chosen."""
    fmt = data.get("format", "coco")
    check_format(fmt)
    return {"format": fmt, "classes": data.get("classes"),
            **{key: data.get(key) for key in FORMATS[fmt]}}


def check_format(fmt: Any) -> None:
    """ValueError naming the formats unless ``fmt`` is one of them."""
    if fmt not in FORMATS:
        raise ValueError(f"data.format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def check_source(fmt: str, given: Mapping[str, Any]) -> None:
    """ValueError unless ``given`` (annotations, images, root, classes) holds what format
    ``fmt`` reads and nothing that only another format reads; the message names the setting
    as it is written on the command line."""
    check_format(fmt)
    for key, meanings in _MEANING.items():
        value = given.get(key)
        if key in FORMATS[fmt]:
            non_empty(value, f"data.{key}", meanings[fmt] + " (a path or URI)")
        elif value is not None:
            readers = " or ".join(f"data.format={f}" for f in meanings)
            raise ValueError(f"data.{key} is read only with {readers}, not with "
                             f"data.format={fmt}; leave it unset (null)")
    _check_classes(fmt, given.get("classes"))


def _check_classes(fmt: str, classes: Any) -> None:
    """``classes``: None, or (with ``voc`` only) a list of distinct non-empty names."""
    if classes is None:
        return
    if fmt != "voc":
        where = ("the dataset YAML's names" if fmt == "yolo" else "the JSON's categories")
        raise ValueError(f"data.classes is read only with data.format=voc; {fmt} data names "
                         f"its classes itself ({where})")
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes or not all(
            isinstance(c, str) and c.strip() for c in classes):
        raise ValueError("data.classes must be a list of class names in id order, e.g. "
                         f"data.classes=[cat,dog], or null (the names found), got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"data.classes names a class more than once: {list(classes)}")


def read_source(fmt: str, given: Mapping[str, Any], split: str) -> SplitSource:
    """Read ``split`` of the data set that ``given`` (the checked source settings) names."""
    if fmt == "coco":
        fs, path = resolve_fs(given["annotations"], None)
        source = load_annotations(path, fs)
        fs_img, images_dir = resolve_fs(given["images"], None)
        uri = given["images"] if is_uri(given["images"]) else images_dir
        return SplitSource(source, fs_img, images_dir, uri)
    if fmt == "yolo":
        fs, path = resolve_fs(given["annotations"], None)
        source, images_dir = load_yolo(path, split, fs)
        return SplitSource(source, fs, images_dir, _for_workers(given["annotations"], images_dir))
    check_format(fmt)
    fs, root = resolve_fs(given["root"], None)
    classes = given.get("classes")
    source, images_dir = load_voc(root, split, fs, list(classes) if classes else None)
    return SplitSource(source, fs, images_dir, _for_workers(given["root"], images_dir))


def _for_workers(given: str, path: str) -> str:
    """``path`` (on the filesystem of the setting ``given``) as workers should open it: a URI
    on the same store when ``given`` was one (its scheme and query, e.g. an S3 endpoint,
    kept), else the local path."""
    if not is_uri(given):
        return path
    parts = urlsplit(given)
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{posixpath.normpath(path)}{query}"
