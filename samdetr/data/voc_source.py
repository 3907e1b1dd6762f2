"""A Pascal VOC data set (the VOCdevkit layout) read into a :class:`CocoSource`, so that it
becomes shards exactly as a COCO file does.

The layout, under one root (``VOCdevkit/VOC2012`` or a folder of your own)::

    Annotations/2008_000008.xml     # one XML per image: <filename>, <size>, <object>s
    JPEGImages/2008_000008.jpg      # the images
    ImageSets/Main/train.txt        # one image id (the XML's stem) per line, for each split

How the XML becomes COCO fields, and why:

- **Boxes.** VOC's ``xmin ymin xmax ymax`` are 1-based pixel indices, both corners inclusive
  (the devkit counts a box's width as ``xmax - xmin + 1`` and a box of the whole image is
  ``1, 1, W, H``). In COCO's continuous pixel coordinates that box covers ``[xmin - 1, xmax]``,
  so ``bbox = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`` (:func:`voc_box`) and
  ``area = w * h``, the devkit's own box area. Non-integer corners are taken the same way.
- **Difficult objects** (``<difficult>1</difficult>``) become ``iscrowd = 1``: what VOC does with
  them is what the COCO path does with crowd boxes. VOC's evaluation ignores them (a detection
  on one is neither a true nor a false positive) and the usual VOC training leaves them out;
  here training drops crowd boxes (``samdetr.data.loader.RowDecoder``) and COCO evaluation
  ignores them (a detection matching a crowd region is not counted). One difference remains:
  COCOeval matches a crowd region by the detection's overlap with it (intersection over the
  detection's area), VOC by IoU. The boxes stay in the shards, so nothing is lost.
- **Class ids** are positions in a class list: ``classes`` when given (ids 0 .. K-1 in its
  order; objects naming another class are rejected), else the sorted names of every object in
  the split's XMLs. That default depends on the data: a split without any "bicycle" numbers
  the classes differently from one with it, so pass ``classes`` whenever several splits or
  runs must agree (always, for training and evaluation).
- **The image file** is ``JPEGImages/<filename>`` when the XML names one that exists, else
  ``JPEGImages/<id>.<suffix>`` for the first image suffix found (``.jpg`` first).
- **The size** is the XML's ``<size>``: the frame the boxes were drawn in. The COCO path then
  checks it against the file as it checks a COCO file's sizes: a size that matches neither the
  stored nor the EXIF-rotated image is rejected (``size_mismatch``), never rescaled, since
  boxes drawn on another image cannot be trusted. Where the XML gives no usable size (absent,
  or not positive integers: some tools write 0), the image's EXIF-oriented size is read.
- An XML without objects is a negative image (kept, no boxes).

Problems become rejects in the format of :mod:`samdetr.data.coco_rows`, beside those that the
COCO path finds later (degenerate boxes, boxes outside the image, unreadable images, sizes):
an id of the split without its XML (``missing_annotation``), an XML that is not well-formed or
not a VOC annotation (``invalid_annotation``), an image file that is not there
(``missing_image``) or cannot be read when its size is needed (``unreadable_image``); for one
object, no name, a box that is not four numbers or a ``<difficult>`` other than 0 / 1
(``invalid_box``), a name outside ``classes`` (``unknown_category``). A missing split file, or a
root without the three folders, is a ValueError naming what exists.

XML is parsed with the standard library's expat, which expands no external entities and, from
expat 2.4.1, refuses entity-expansion bombs.
"""

from __future__ import annotations

import hashlib
import math
import os
import posixpath
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from PIL import UnidentifiedImageError

from samdetr.data.coco_rows import make_reject
from samdetr.data.coco_source import CocoSource, source_from_document
from samdetr.data.images import oriented_size
from samdetr.data.storage import IMAGE_SUFFIXES, read_bytes, resolve_fs

__all__ = ["ANNOTATIONS", "IMAGES", "SPLITS", "load_voc", "voc_box"]

ANNOTATIONS = "Annotations"
IMAGES = "JPEGImages"
SPLITS = "ImageSets/Main"


@dataclass(frozen=True)
class _Object:
    """One ``<object>``: its position in the XML (1-based), its name, and its COCO box and
    difficult flag, or the reason it is rejected (``problem``)."""

    number: int
    name: str | None
    box: list[float] | None = None
    difficult: int = 0
    problem: str | None = None


@dataclass(frozen=True)
class _Annotation:
    """What one XML says: the image file it names, its size (None: not usable), its objects."""

    file_name: str | None
    size: tuple[int, int] | None
    objects: list[_Object]


@dataclass(frozen=True)
class _Entry:
    """One id of the split: the image's file name (relative to the root) and the parsed XML
    with the image's size, or why the whole image is rejected (``problem``)."""

    image_id: int
    file_name: str
    annotation: _Annotation | None = None
    size: tuple[int, int] | None = None
    problem: str | None = None


def load_voc(root: str | os.PathLike[str], split: str, filesystem: pafs.FileSystem | None = None,
             classes: Sequence[str] | None = None) -> tuple[CocoSource, str]:
    """``(source, images_root)`` of one split (``train``, ``val``, ``trainval``, ...) of the VOC
    data set at ``root`` (a local path or a URI; a path on ``filesystem`` when given). File names
    in the source (``JPEGImages/<file>``) are relative to ``images_root``, the root itself.

    ``classes``: the class names in id order (0 .. K-1); default: the sorted names found in the
    split's XMLs, which depend on the data (see the module docstring).
    """
    chosen = _checked_classes(classes)
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"split must name a file of {SPLITS}/ (e.g. 'train'), got {split!r}")
    fs, root = resolve_fs(root, filesystem)
    root = root.rstrip("/") or "/"
    _check_layout(fs, root)
    split_path = f"{root}/{SPLITS}/{split}.txt"
    raw_split = _split_bytes(fs, root, split)
    digest = hashlib.sha256(raw_split)
    available = _image_names(fs, f"{root}/{IMAGES}")
    entries = []
    for image_id, stem in enumerate(_split_ids(raw_split, split_path), start=1):
        entry, raw_xml = _entry(fs, root, image_id, stem, available)
        digest.update(f"\0{stem}\0".encode() + (raw_xml or b""))
        entries.append(entry)
    names = list(chosen) if chosen is not None else _found_names(entries)
    if not names:
        raise ValueError(f"{split_path}: no object of the split names a class, so there are no "
                         "classes; pass classes=[...] to name them")
    digest.update("\0".join(names).encode())
    document, rejects = _document(entries, names)
    source = source_from_document(document, split_path, digest.hexdigest())
    source.rejects.extend(rejects)
    return source, root


def voc_box(xmin: float, ymin: float, xmax: float, ymax: float) -> list[float]:
    """COCO ``[x, y, w, h]`` of a VOC box: 1-based pixel indices, both corners inclusive, so
    the box covers ``[xmin - 1, xmax] x [ymin - 1, ymax]`` in continuous pixel coordinates."""
    return [xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0]


def _checked_classes(classes: Sequence[str] | None) -> tuple[str, ...] | None:
    """``classes`` as a tuple of distinct non-empty names (or None); TypeError / ValueError
    saying what is wrong with it."""
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise TypeError(f"classes must be a list of class names, got {classes!r}")
    names = tuple(classes)
    if not names:
        raise ValueError("classes must name at least one class (or be None: the names found)")
    bad = [n for n in names if not isinstance(n, str) or not n.strip() or n != n.strip()]
    if bad:
        raise ValueError(f"classes must be non-empty names without surrounding blanks, got {bad}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"classes names {twice} more than once")
    return names


def _check_layout(fs: pafs.FileSystem, root: str) -> None:
    """ValueError unless ``root`` holds the three VOC folders."""
    missing = [folder for folder in (ANNOTATIONS, IMAGES, SPLITS)
               if fs.get_file_info(f"{root}/{folder}").type != pafs.FileType.Directory]
    if missing:
        raise ValueError(f"{root}: not a VOC data set root: no {', '.join(missing)} folder(s); "
                         f"expected {ANNOTATIONS}/, {IMAGES}/ and {SPLITS}/<split>.txt")


def _split_bytes(fs: pafs.FileSystem, root: str, split: str) -> bytes:
    """The split file's content; ValueError listing the splits there are when it is missing."""
    try:
        return read_bytes(fs, f"{root}/{SPLITS}/{split}.txt")
    except FileNotFoundError:
        raise ValueError(f"{root}: no split {split!r} ({SPLITS}/{split}.txt); the splits there "
                         f"are {_available_splits(fs, f'{root}/{SPLITS}')}") from None


def _available_splits(fs: pafs.FileSystem, folder: str) -> list[str]:
    """The split names of ``folder``: its ``.txt`` stems, without VOC's per-class lists
    (``<class>_<split>.txt``, which name another listed split after an underscore)."""
    stems = {posixpath.splitext(posixpath.basename(f.path))[0]
             for f in fs.get_file_info(pafs.FileSelector(folder))
             if f.type == pafs.FileType.File and f.path.endswith(".txt")}
    return sorted(s for s in stems if not any(s.endswith(f"_{other}") for other in stems))


def _split_ids(raw: bytes, path: str) -> list[str]:
    """The image ids of a split file, in its order; ValueError for a line that is not one id
    or an id listed twice."""
    ids: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(raw.decode("utf-8-sig").splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        if len(words) != 1:
            raise ValueError(f"{path}, line {number}: expected one image id, got {line.strip()!r}"
                             " (a per-class list such as cat_train.txt is not a split)")
        if words[0] in seen:
            raise ValueError(f"{path}, line {number}: image id {words[0]!r} is listed twice")
        seen.add(words[0])
        ids.append(words[0])
    return ids


def _image_names(fs: pafs.FileSystem, folder: str) -> set[str]:
    """The file names in the image folder (one listing, not one request per image)."""
    return {posixpath.basename(f.path) for f in fs.get_file_info(pafs.FileSelector(folder))
            if f.type == pafs.FileType.File}


def _entry(fs: pafs.FileSystem, root: str, image_id: int, stem: str,
           available: set[str]) -> tuple[_Entry, bytes | None]:
    """The :class:`_Entry` of one id, and its XML's bytes (None when there is none)."""
    xml_name = f"{ANNOTATIONS}/{stem}.xml"
    guess = _image_file(stem, None, available) or f"{stem}.jpg"
    try:
        raw = read_bytes(fs, f"{root}/{xml_name}")
    except FileNotFoundError:
        return _Entry(image_id, f"{IMAGES}/{guess}",
                      problem=f"missing_annotation: no {xml_name}"), None
    try:
        annotation = _parse_xml(raw)
    except ValueError as err:
        return _Entry(image_id, f"{IMAGES}/{guess}",
                      problem=f"invalid_annotation: {xml_name}: {err}"), raw
    image = _image_file(stem, annotation.file_name, available)
    if image is None:
        named = posixpath.basename(annotation.file_name or "") or f"{stem}.jpg"
        return _Entry(image_id, f"{IMAGES}/{named}", annotation,
                      problem=f"missing_image: no {IMAGES}/{named} (for {xml_name})"), raw
    size = annotation.size or _measured_size(fs, f"{root}/{IMAGES}/{image}")
    if isinstance(size, str):  # a reason
        return _Entry(image_id, f"{IMAGES}/{image}", annotation, problem=size), raw
    return _Entry(image_id, f"{IMAGES}/{image}", annotation, size), raw


def _image_file(stem: str, named: str | None, available: set[str]) -> str | None:
    """The image's name in the image folder: the XML's ``<filename>`` if it is there, else
    ``<stem><suffix>`` for the first suffix (and case) found; None when neither is there."""
    if named and posixpath.basename(named) in available:
        return posixpath.basename(named)
    for suffix in sorted(IMAGE_SUFFIXES, key=lambda s: s != ".jpg"):
        for candidate in (stem + suffix, stem + suffix.upper()):
            if candidate in available:
                return candidate
    return None


def _parse_xml(raw: bytes) -> _Annotation:
    """The :class:`_Annotation` of an XML's bytes; ValueError when it is not well-formed or its
    root is not ``<annotation>``."""
    try:
        element = ElementTree.fromstring(raw)
    except ElementTree.ParseError as err:
        raise ValueError(f"not well-formed XML ({err})") from None
    if element.tag != "annotation":
        raise ValueError(f"the root element is <{element.tag}>, not <annotation>")
    objects = [_parse_object(node, number)
               for number, node in enumerate(element.findall("object"), start=1)]
    return _Annotation(_text(element, "filename"), _xml_size(element), objects)


def _text(element: ElementTree.Element, path: str) -> str | None:
    """The stripped text at ``path`` below ``element``; None when absent or blank."""
    found = element.find(path)
    text = (found.text or "").strip() if found is not None else ""
    return text or None


def _xml_size(element: ElementTree.Element) -> tuple[int, int] | None:
    """``(width, height)`` from ``<size>`` when both are positive integers, else None."""
    values = []
    for key in ("width", "height"):
        text = _text(element, f"size/{key}")
        if text is None or not text.isdigit() or int(text) <= 0:
            return None
        values.append(int(text))
    return values[0], values[1]


def _parse_object(node: ElementTree.Element, number: int) -> _Object:
    """One ``<object>``: its name, and its COCO box and difficult flag or why it is rejected."""
    name = _text(node, "name")
    if name is None:
        return _Object(number, None, problem=f"invalid_box: object {number} has no <name>")
    difficult = _text(node, "difficult") or "0"
    if difficult not in ("0", "1"):
        return _Object(number, name, problem=f"invalid_box: object {number} ({name}) has "
                                             f"<difficult> {difficult!r}, not 0 or 1")
    corners = [_text(node, f"bndbox/{key}") for key in ("xmin", "ymin", "xmax", "ymax")]
    try:
        values = [float(v) for v in corners]  # a missing corner: TypeError
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        shown = dict(zip(("xmin", "ymin", "xmax", "ymax"), corners, strict=True))
        return _Object(number, name, problem=f"invalid_box: object {number} ({name}) has no "
                                             f"numeric <bndbox> corners: {shown}")
    return _Object(number, name, voc_box(*values), int(difficult))


def _measured_size(fs: pafs.FileSystem, path: str) -> tuple[int, int] | str:
    """The image's ``(width, height)`` after its EXIF orientation, or a reject reason."""
    try:
        return oriented_size(read_bytes(fs, path))
    except (UnidentifiedImageError, OSError) as err:
        return f"unreadable_image: {err}"


def _found_names(entries: list[_Entry]) -> list[str]:
    """The sorted names of every object in the split's readable XMLs (the default classes)."""
    return sorted({o.name for e in entries if e.annotation is not None
                   for o in e.annotation.objects if o.name is not None})


def _document(entries: list[_Entry], names: list[str]
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO instances document of the entries, and the rejects, in image order."""
    ids = {name: i for i, name in enumerate(names)}
    document: dict[str, Any] = {"images": [], "annotations": [], "categories": [
        {"id": i, "name": name} for name, i in ids.items()]}
    rejects: list[dict[str, Any]] = []
    for entry in entries:
        annotation = entry.annotation
        if entry.problem is not None or annotation is None or entry.size is None:
            count = len(annotation.objects) if annotation is not None else 0
            rejects.append({**make_reject("image", entry.image_id, None, entry.file_name,
                                          entry.problem), "num_annotations": count})
            continue
        document["images"].append({"id": entry.image_id, "file_name": entry.file_name,
                                   "width": entry.size[0], "height": entry.size[1]})
        for obj in annotation.objects:
            problem = obj.problem
            if problem is None and obj.name not in ids:  # only when classes were given
                problem = (f"unknown_category: {obj.name!r} (object {obj.number}) is not one "
                           f"of the classes {names}")
            if problem is not None or obj.box is None:
                rejects.append(make_reject("box", entry.image_id, None, entry.file_name,
                                           problem))
                continue
            document["annotations"].append({
                "id": len(document["annotations"]) + 1, "image_id": entry.image_id,
                "category_id": ids[obj.name], "bbox": obj.box,
                "area": obj.box[2] * obj.box[3], "iscrowd": obj.difficult})
    return document, rejects
