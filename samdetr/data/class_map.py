"""Choosing, renaming and merging the classes of a :class:`~samdetr.data.coco_source.CocoSource`
before it becomes shards: :class:`ClassMap` says what to do, :func:`apply_class_map` does it.

- ``keep``: the source's class names to keep, in the order that numbers them; the others are
  dropped. None keeps every class, in the source's category order (ascending id).
- ``rename``: ``{old name: new name}``. Renaming a class to a name another kept class has (or
  is renamed to) merges them into one class.

**Ids.** A class map numbers the resulting classes 0 .. K-1, in the order their names first
appear when the kept classes are walked in ``keep`` order (or the source's id order), so that
K = number of classes. Keeping the source's ids would leave holes: a detector's class head has
K = max id + 1 outputs (COCO's 80 classes already span 91), and a subset of COCO would keep
the whole width for a few classes. 0-based ids are what the YOLO and VOC readers give too.
With ``keep`` the ids come from the map alone, so every split of a data set is numbered the
same even when one split lacks a class.

**Dropped boxes** are removed, not rejected: leaving a class out is a choice, not a fault of
the data, so they are counted per class (:attr:`ClassSelection.dropped_boxes`) rather than
listed as rejects. An image whose every box was dropped stays, as a negative image: it shows
the detector background where the dropped objects stood, which is what it will see in use
(an image of a dog is a true negative for a bus detector). ``drop_emptied_images`` removes
such images instead, e.g. when a small subset of a large set would leave mostly negatives;
images that had no box to begin with are kept either way.

Names are checked once against the source: an unknown name in ``keep`` or ``rename`` is a
ValueError listing the data set's class names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from samdetr.data.coco_source import CocoSource

__all__ = ["ClassMap", "ClassSelection", "apply_class_map"]


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"{what} must be a non-empty class name (a string), got {name!r}")


@dataclass(frozen=True)
class ClassMap:
    """Which classes of a source to keep and what to call them (see the module docstring).

    ``keep``: source class names, distinct, in the order that numbers them (None: all).
    ``rename``: ``{source name: new name}``; two classes renamed to one name are merged.
    ``drop_emptied_images``: remove the images whose every box was dropped (default: keep
    them as negative images).
    """

    keep: tuple[str, ...] | None = None
    rename: Mapping[str, str] | None = None
    drop_emptied_images: bool = False

    def __post_init__(self) -> None:
        if self.keep is not None:
            if isinstance(self.keep, str) or not isinstance(self.keep, Sequence):
                raise TypeError(f"ClassMap.keep must be a list of class names, got {self.keep!r}")
            for name in self.keep:
                _check_name(name, "every name in ClassMap.keep")
            if not self.keep:
                raise ValueError("ClassMap.keep is empty: it would drop every class")
            repeated = sorted({n for n in self.keep if list(self.keep).count(n) > 1})
            if repeated:
                raise ValueError(f"ClassMap.keep names {repeated} more than once")
            object.__setattr__(self, "keep", tuple(self.keep))
        if self.rename is not None:
            if not isinstance(self.rename, Mapping):
                raise TypeError("ClassMap.rename must be a mapping {old name: new name}, "
                                f"got {self.rename!r}")
            for old, new in self.rename.items():
                _check_name(old, "every key of ClassMap.rename")
                _check_name(new, f"ClassMap.rename[{old!r}]")
            object.__setattr__(self, "rename", dict(self.rename))
        if not isinstance(self.drop_emptied_images, bool):
            raise TypeError("ClassMap.drop_emptied_images must be True or False, got "
                            f"{self.drop_emptied_images!r}")

    def numbering(self, names: Sequence[str]) -> dict[str, int]:
        """``{source name: new id}`` of the kept classes of a source whose class names are
        ``names`` (in its id order). ValueError when ``keep`` or ``rename`` names a class that
        ``names`` lacks (the message lists them), when ``rename`` renames a class that ``keep``
        drops, or when ``names`` repeats a name (a name could not say which class it means)."""
        _check_against(self, list(names))
        kept = self.keep if self.keep is not None else tuple(names)
        rename = self.rename or {}
        new_ids: dict[str, int] = {}
        for name in kept:
            new_ids.setdefault(rename.get(name, name), len(new_ids))
        return {name: new_ids[rename.get(name, name)] for name in kept}

    def new_name(self, name: str) -> str:
        """What the source class ``name`` is called after the map."""
        return (self.rename or {}).get(name, name)


def _check_against(class_map: ClassMap, names: list[str]) -> None:
    """The checks of :meth:`ClassMap.numbering` (see there)."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"the data set names more than one class {repeated}, so a class map "
                         "cannot tell them apart by name")
    known = set(names)
    for what, given in (("keep", class_map.keep or ()), ("rename", class_map.rename or {})):
        unknown = [n for n in given if n not in known]
        if unknown:
            raise ValueError(f"ClassMap.{what} names {unknown}, which the data set does not "
                             f"have; its classes are {names}")
    if class_map.keep is not None and class_map.rename:
        dropped = [n for n in class_map.rename if n not in class_map.keep]
        if dropped:
            raise ValueError(f"ClassMap.rename renames {dropped}, which ClassMap.keep drops; "
                             "keep them too or leave them out of rename")


@dataclass(frozen=True)
class ClassSelection:
    """What :func:`apply_class_map` made of a source.

    ``class_map``: the map applied. ``source``: the new source (categories 0 .. K-1, boxes
    re-labelled). ``ids``: every class
    name of the old source -> its new id, None when dropped. ``dropped_boxes``: every dropped
    class -> the boxes removed with it (0 included). ``emptied_images``: images that had boxes
    and lost them all (kept as negatives, or removed with ``drop_emptied_images``).
    """

    class_map: ClassMap
    source: CocoSource
    ids: dict[str, int | None]
    dropped_boxes: dict[str, int]
    emptied_images: int

    def record(self) -> dict[str, Any]:
        """A JSON-ready account of the selection, for a manifest: the map as given and what it
        did (so a run can be read back and repeated)."""
        class_map = self.class_map
        return {
            "keep": list(class_map.keep) if class_map.keep is not None else None,
            "rename": dict(class_map.rename) if class_map.rename is not None else None,
            "drop_emptied_images": class_map.drop_emptied_images,
            "ids": dict(self.ids),
            "dropped_boxes": dict(self.dropped_boxes),
            "emptied_images": self.emptied_images,
            "images_removed": self.emptied_images if class_map.drop_emptied_images else 0,
        }


def apply_class_map(source: CocoSource, class_map: ClassMap) -> ClassSelection:
    """The source with ``class_map`` applied; ``source`` itself is left as it was.

    Categories become ``[{id, name, supercategory}]`` with ids 0 .. K-1 (a merged class takes
    the supercategory of its first source class); every kept annotation is copied with its new
    ``category_id``, every other one removed and counted; rejects stay as they are (they are
    faults of the input, whatever is kept).
    """
    if not isinstance(class_map, ClassMap):
        raise TypeError(f"class_map must be a ClassMap, got {type(class_map).__name__}")
    names = {c["id"]: c["name"] for c in source.categories}
    numbering = class_map.numbering(list(names.values()))
    new_ids = {cid: numbering[name] for cid, name in names.items() if name in numbering}
    annotations, dropped, emptied = _relabel(source, new_ids, names)
    images = source.images
    if class_map.drop_emptied_images:
        images = [info for info in images if info["id"] not in emptied]
    categories = _categories(source, class_map, numbering)
    mapped = dataclasses.replace(source, images=list(images), annotations=annotations,
                                 categories=categories, num_classes=len(categories),
                                 rejects=list(source.rejects))
    return ClassSelection(
        class_map=class_map,
        source=mapped,
        ids={name: numbering.get(name) for name in names.values()},
        dropped_boxes={name: dropped.get(name, 0) for name in names.values()
                       if name not in numbering},
        emptied_images=len(emptied),
    )


def _relabel(source: CocoSource, new_ids: dict[int, int], names: dict[int, str]
             ) -> tuple[dict[int, list[dict[str, Any]]], dict[str, int], set[int]]:
    """``(image id -> kept annotations re-labelled, dropped boxes per class name, ids of the
    images that lost every box)``."""
    annotations: dict[int, list[dict[str, Any]]] = {}
    dropped: dict[str, int] = {}
    emptied: set[int] = set()
    for image_id, anns in source.annotations.items():
        kept = [{**ann, "category_id": new_ids[ann["category_id"]]} for ann in anns
                if ann["category_id"] in new_ids]
        for ann in anns:
            if ann["category_id"] not in new_ids:
                name = names[ann["category_id"]]
                dropped[name] = dropped.get(name, 0) + 1
        if kept:
            annotations[image_id] = kept
        elif anns:
            emptied.add(image_id)
    return annotations, dropped, emptied


def _categories(source: CocoSource, class_map: ClassMap, numbering: dict[str, int]
                ) -> list[dict[str, Any]]:
    """The new categories in id order; a merged class takes its first member's
    supercategory."""
    supercategories = {c["name"]: c.get("supercategory", "") for c in source.categories}
    categories: dict[int, dict[str, Any]] = {}
    for name, new_id in numbering.items():  # in numbering order: the first member comes first
        categories.setdefault(new_id, {"id": new_id, "name": class_map.new_name(name),
                                       "supercategory": supercategories[name]})
    return [categories[i] for i in sorted(categories)]
