"""A YOLO dataset (the Ultralytics layout) read into a :class:`CocoSource`, so that it becomes
shards exactly as a COCO file does.

The layout::

    data.yaml            path: .            # the root (relative to this file; default: its folder)
                         train: images/train  # per split: a folder, a list of folders, or a .txt
                         val: images/val      #   file listing images (relative to the root)
                         names: [cat, dog]    # or {0: cat, 1: dog}; the class index is the id
    images/train/a.jpg   labels/train/a.txt   # one line per box: class cx cy w h, normalised

An image's label file is its path with the last ``images`` folder replaced by ``labels`` and the
suffix by ``.txt``. An image without a label file, or with an empty one, is a negative image
(kept, no boxes). Category ids are the class indices (0 .. K-1), with the YAML's names.

Problems become rejects in the format of :mod:`samdetr.data.coco_rows`, beside those that the
COCO path finds later (degenerate boxes, boxes outside the image, unreadable images): a class
index the YAML does not name (``unknown_category``), a line that is not five numbers or a box
whose centre and size are not normalised to [0, 1] (``invalid_box``), an image whose size
cannot be read or a label file without its image (``missing_image`` / ``unreadable_image``).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from typing import Any

import pyarrow.fs as pafs
import yaml
from PIL import UnidentifiedImageError

from samdetr.data.coco_rows import make_reject
from samdetr.data.coco_source import CocoSource, source_from_document
from samdetr.data.images import oriented_size
from samdetr.data.storage import read_bytes, resolve_fs

__all__ = ["IMAGE_SUFFIXES", "load_yolo"]

#: Image files a split folder is searched for (case-insensitive).
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def load_yolo(data_yaml: str | os.PathLike[str], split: str,
              filesystem: pafs.FileSystem | None = None) -> tuple[CocoSource, str]:
    """``(source, images_dir)`` of one split (``train``, ``val``, ...) of the YOLO dataset
    described by ``data_yaml`` (a local path or a URI); file names in the source are relative
    to ``images_dir`` (the dataset's root)."""
    fs, yaml_path = resolve_fs(data_yaml, filesystem)
    raw = read_bytes(fs, yaml_path)
    spec = _parse_yaml(raw, yaml_path)
    names = _names(spec, yaml_path)
    root = spec.get("path")
    base = posixpath.dirname(yaml_path)
    root = base if root in (None, "", ".") else posixpath.normpath(posixpath.join(base, root))
    if split not in spec or spec[split] in (None, ""):
        raise ValueError(f"{yaml_path}: no '{split}' split (it names "
                         f"{sorted(k for k in spec if k not in ('path', 'names', 'nc'))})")
    images = _split_images(fs, root, spec[split], yaml_path)
    digest = hashlib.sha256(raw)
    document: dict[str, Any] = {"images": [], "annotations": [], "categories": [
        {"id": i, "name": name} for i, name in enumerate(names)]}
    rejects: list[dict[str, Any]] = []
    for image_id, path in enumerate(images, start=1):
        file_name = posixpath.relpath(path, root)
        size = _oriented_size(fs, path)
        if isinstance(size, str):  # a reason
            rejects.append({**make_reject("image", image_id, None, file_name, size),
                            "num_annotations": 0})
            continue
        document["images"].append({"id": image_id, "file_name": file_name,
                                   "width": size[0], "height": size[1]})
        text = _label_text(fs, label_path(path))
        digest.update(file_name.encode() + b"\0" + text.encode())
        boxes, bad = _parse_labels(text, len(names), size)
        for category, box in boxes:
            document["annotations"].append({
                "id": len(document["annotations"]) + 1, "image_id": image_id,
                "category_id": category, "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        rejects += [make_reject("box", image_id, None, file_name, reason) for reason in bad]
    rejects += _orphan_labels(fs, root, images)
    source = source_from_document(document, yaml_path, digest.hexdigest())
    source.rejects.extend(rejects)
    return source, root


def label_path(image_path: str) -> str:
    """The label file of an image: the last ``/images/`` of its path replaced by ``/labels/``,
    the suffix by ``.txt`` (Ultralytics' rule)."""
    head, sep, tail = image_path.rpartition("/images/")
    path = f"{head}/labels/{tail}" if sep else image_path
    return posixpath.splitext(path)[0] + ".txt"


def _parse_yaml(raw: bytes, path: str) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a valid YAML file ({err})") from err
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a YOLO dataset YAML (path, train, val, names)")
    return spec


def _names(spec: dict[str, Any], path: str) -> list[str]:
    """The class names by index: a list, or a dict ``{0: name, ...}`` with indices 0 .. K-1."""
    names = spec.get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise ValueError(f"{path}: 'names' must number the classes 0 .. K-1, got "
                             f"{sorted(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{path}: 'names' must list the class names (a list, or a dict from "
                         "class index to name)")
    if "nc" in spec and spec["nc"] != len(names):
        raise ValueError(f"{path}: nc is {spec['nc']} but 'names' has {len(names)} classes")
    return [str(n) for n in names]


def _split_images(fs: pafs.FileSystem, root: str, entry: Any, path: str) -> list[str]:
    """Every image of a split, sorted: from folders (searched recursively) or .txt lists."""
    entries = entry if isinstance(entry, list) else [entry]
    found: list[str] = []
    for item in entries:
        where = posixpath.normpath(posixpath.join(root, str(item)))
        if where.endswith(".txt"):
            for line in read_bytes(fs, where).decode().splitlines():
                if line.strip():
                    found.append(posixpath.normpath(posixpath.join(root, line.strip())))
            continue
        info = fs.get_file_info(where)
        if info.type != pafs.FileType.Directory:
            raise ValueError(f"{path}: the split folder {where} does not exist")
        for file in fs.get_file_info(pafs.FileSelector(where, recursive=True)):
            if file.type == pafs.FileType.File and file.path.lower().endswith(IMAGE_SUFFIXES):
                found.append(file.path)
    return sorted(set(found))


def _oriented_size(fs: pafs.FileSystem, path: str) -> tuple[int, int] | str:
    """``(width, height)`` after the EXIF orientation, or a reject reason."""
    try:
        data = read_bytes(fs, path)
    except FileNotFoundError:
        return "missing_image"
    try:
        return oriented_size(data)
    except (UnidentifiedImageError, OSError) as err:
        return f"unreadable_image: {err}"


def _label_text(fs: pafs.FileSystem, path: str) -> str:
    try:
        return read_bytes(fs, path).decode()
    except FileNotFoundError:
        return ""  # no label file: a negative image


def _parse_labels(text: str, num_classes: int, size: tuple[int, int]
                  ) -> tuple[list[tuple[int, list[float]]], list[str]]:
    """``([(class, [x, y, w, h] pixels)], [reject reasons])`` of a label file."""
    width, height = size
    boxes, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        try:
            values = [float(w) for w in words]
        except ValueError:
            bad.append(f"invalid_box: line {number} is not numbers: {line.strip()!r}")
            continue
        if len(values) != 5 or values[0] != int(values[0]):
            bad.append(f"invalid_box: line {number} is not 'class cx cy w h': {line.strip()!r}")
            continue
        category, (cx, cy, w, h) = int(values[0]), values[1:]
        if not 0 <= category < num_classes:
            bad.append(f"unknown_category: class {category} on line {number} (the YAML names "
                       f"{num_classes} classes)")
            continue
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            bad.append(f"invalid_box: line {number} is not normalised to [0, 1]: "
                       f"{line.strip()!r}")
            continue
        box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
        boxes.append((category, box))
    return boxes, bad


def _orphan_labels(fs: pafs.FileSystem, root: str, images: list[str]) -> list[dict[str, Any]]:
    """A reject for each label file, in the folders of the split's label files, that belongs to
    no image (of this split or another: its image folder has no file of that name)."""
    orphans = []
    for folder in sorted({posixpath.dirname(label_path(p)) for p in images}):
        if fs.get_file_info(folder).type != pafs.FileType.Directory:
            continue
        head, sep, tail = folder.rpartition("/labels")
        pictures = f"{head}/images{tail}" if sep else folder
        known = set()
        if fs.get_file_info(pictures).type == pafs.FileType.Directory:
            known = {label_path(f.path) for f in fs.get_file_info(pafs.FileSelector(pictures))
                     if f.path.lower().endswith(IMAGE_SUFFIXES)}
        for file in fs.get_file_info(pafs.FileSelector(folder)):
            if file.path.endswith(".txt") and file.path not in known:
                orphans.append({**make_reject("image", None, None, posixpath.relpath(
                    file.path, root), "missing_image: a label file without its image"),
                    "num_annotations": 0})
    return sorted(orphans, key=lambda r: r["file_name"])
