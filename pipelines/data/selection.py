"""The classes a preprocessing run keeps and the part of a one-split data set it writes: the
``data`` node's settings for both, checked once, applied to the source that was read, and
recorded in the manifest (``selection``).

==========================  ==========================================================
``data.keep_classes``       class names to keep, in the order that numbers them 0 .. K-1
``data.rename_classes``     ``{old: new}``; two classes given one name are merged
``data.drop_emptied_images``  remove images whose every box was dropped (default: keep
                            them as negatives)
``data.val_fraction``       carve the data's one split into train and val: about this
                            share of its images is val, and ``split=train|val`` says
                            which part the run writes
``data.split_seed``         the seed of that split (default 0)
``data.split_from``         yolo, voc: the split that is carved (default ``train``; a
                            COCO JSON is one split)
==========================  ==========================================================

They live in the ``data`` node because they describe the data set: a data group that sets
them gives the train run and the val run the same classes and the same split, which the two
shard sets must share. The library does the work (:mod:`samdetr.data.class_map`,
:mod:`samdetr.data.source_split`); the checks here name the settings as the command line
writes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from samdetr.data.class_map import ClassMap, apply_class_map
from samdetr.data.coco_source import CocoSource
from samdetr.data.source_split import split_source

#: The keys of the ``data`` node read here (besides the source's: pipelines.data.sources).
SELECTION_KEYS = ("keep_classes", "rename_classes", "drop_emptied_images", "val_fraction",
                  "split_seed", "split_from")
#: The parts a carved split is written as (``split=``).
PARTS = ("train", "val")


def selection_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The selection settings a ``data`` config node gives (the keys it has of
    :data:`SELECTION_KEYS`; the others keep their defaults)."""
    return {key: data[key] for key in SELECTION_KEYS if key in data}


@dataclass(frozen=True)
class Selection:
    """What a run takes from the source it read: ``class_map`` (None: every class, ids as in
    the source) and, with ``val_fraction``, the part ``split`` (train or val) of the split
    ``split_from`` carved with ``split_seed``."""

    class_map: ClassMap | None
    split: str
    val_fraction: float | None = None
    split_seed: int = 0
    split_from: str = "train"

    def read_split(self) -> str:
        """The split of the data set the run reads: ``split_from`` when carving, else
        ``split``."""
        return self.split_from if self.val_fraction is not None else self.split

    def apply(self, source: CocoSource) -> tuple[CocoSource, dict[str, Any] | None]:
        """``(source, record)``: the part of ``source`` this run writes, with the class map
        applied, and the manifest's ``selection`` record (None when the source is used as it
        is). The split comes first, so the class map's counts are this part's."""
        record: dict[str, Any] = {"split": None, "classes": None}
        if self.val_fraction is not None:
            parts = split_source(source, self.val_fraction, self.split_seed)
            source = getattr(parts, self.split)
            record["split"] = {
                "from": self.split_from, "part": self.split, "val_fraction": self.val_fraction,
                "seed": self.split_seed, "images": {p: len(getattr(parts, p).images)
                                                    for p in PARTS}}
        if self.class_map is not None:
            selected = apply_class_map(source, self.class_map)
            if source.images and not selected.source.images:
                raise ValueError(f"{source.path}: data.drop_emptied_images removes every image "
                                 "of this split: no image holds a kept class")
            source, record["classes"] = selected.source, selected.record()
        return source, (record if any(record.values()) else None)


def selection_of(fmt: str, split: str, given: Mapping[str, Any]) -> Selection:
    """The :class:`Selection` of a run of format ``fmt`` writing ``split``, from the settings
    ``given`` (by :data:`SELECTION_KEYS` name); ValueError or TypeError naming the setting."""
    class_map = _class_map(given.get("keep_classes"), given.get("rename_classes"),
                           given.get("drop_emptied_images", False))
    fraction, seed, origin = (given.get(k) for k in ("val_fraction", "split_seed", "split_from"))
    seed = 0 if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"data.split_seed must be an integer, got {seed!r}")
    if fraction is None:
        if origin is not None:
            raise ValueError("data.split_from is read only with data.val_fraction (it names the "
                             "split that is carved into train and val); set both or neither")
        return Selection(class_map, split)
    _check_carving(fmt, split, fraction, origin)
    return Selection(class_map, split, float(fraction), seed, origin or "train")


def _class_map(keep: Any, rename: Any, drop_emptied: Any) -> ClassMap | None:
    """The class map of the settings, None when they choose nothing."""
    if not isinstance(drop_emptied, bool):
        raise TypeError(f"data.drop_emptied_images must be true or false, got {drop_emptied!r}")
    if keep is None and rename is None:
        if drop_emptied:
            raise ValueError("data.drop_emptied_images is read only with data.keep_classes or "
                             "data.rename_classes: without them no image loses its boxes")
        return None
    if keep is not None:
        if (isinstance(keep, str) or not isinstance(keep, Sequence) or not keep
                or not all(isinstance(n, str) and n.strip() for n in keep)):
            raise TypeError("data.keep_classes must be a list of class names, e.g. "
                            f"data.keep_classes=[cat,dog], or null (every class), got {keep!r}")
        if len(set(keep)) != len(keep):
            raise ValueError(f"data.keep_classes names a class more than once: {list(keep)}")
    if rename is not None and (not isinstance(rename, Mapping) or not all(
            isinstance(k, str) and k.strip() and isinstance(v, str) and v.strip()
            for k, v in rename.items())):
        raise TypeError("data.rename_classes must map class names to new names, e.g. "
                        f"data.rename_classes={{kitty:cat}}, or be null, got {rename!r}")
    return ClassMap(keep=tuple(keep) if keep is not None else None,
                    rename=dict(rename) if rename is not None else None,
                    drop_emptied_images=drop_emptied)


def _check_carving(fmt: str, split: str, fraction: Any, origin: Any) -> None:
    """The settings of a carved split: a fraction in (0, 1), the part written, the split read."""
    if (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
            or not math.isfinite(fraction) or not 0 < fraction < 1):
        raise ValueError("data.val_fraction must be a number strictly between 0 and 1 (the "
                         f"share of the images that goes to val), or null, got {fraction!r}")
    if split not in PARTS:
        raise ValueError(f"with data.val_fraction, split names the part the run writes: "
                         f"split=train or split=val, got {split!r}")
    if origin is not None and fmt == "coco":
        raise ValueError("data.split_from is read only with data.format=yolo or voc: a COCO "
                         "JSON is one split already; leave it unset (null)")
    if origin is not None and (not isinstance(origin, str) or not origin.strip()):
        raise ValueError(f"data.split_from must name a split of the data set, got {origin!r}")


def selection_lines(record: Mapping[str, Any] | None) -> list[str]:
    """Summary lines of a manifest's ``selection`` record (none when there is none)."""
    if not record:
        return []
    lines = []
    classes, split = record.get("classes"), record.get("split")
    if classes:
        lines.append(f"  classes  {_class_line(classes)}")
    if split:
        images = split["images"]
        lines.append(f"  part     {images[split['part']]:>8}   images: {split['part']} of "
                     f"{split['from']!r} (train {images['train']}, val {images['val']}; "
                     f"val_fraction {split['val_fraction']}, split_seed {split['seed']})")
    return lines


def _class_line(classes: Mapping[str, Any]) -> str:
    """``K: 0 person, 1 vehicle (car + truck); ...`` of a class-map record."""
    members: dict[int, list[str]] = {}
    for name, new_id in classes["ids"].items():
        if new_id is not None:
            members.setdefault(new_id, []).append(name)
    rename = classes["rename"] or {}
    shown = []
    for new_id, names in sorted(members.items()):
        new_name = rename.get(names[0], names[0])
        shown.append(f"{new_id} {new_name}" + ("" if names == [new_name]
                                                 else f" ({' + '.join(names)})"))
    emptied = classes["emptied_images"]
    return (f"{len(members):>8}   {', '.join(shown)}; removed "
            f"{sum(classes['dropped_boxes'].values())} boxes of {len(classes['dropped_boxes'])} "
            f"other classes, {emptied} images left without boxes"
            + (" (dropped)" if classes["drop_emptied_images"] else " (kept as negatives)"))
