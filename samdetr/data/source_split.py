"""A seeded train/val split of a :class:`~samdetr.data.coco_source.CocoSource`, for data that
comes with one split only.

Each image goes to val when the hash of the seed and its file name, read as a number in
[0, 1), is below ``val_fraction`` (:func:`val_position`). So an image's side depends on its
file name, the seed and the fraction alone:

- the same seed and data give the same split, whatever order the images are listed in and on
  whichever machine (SHA-256, not Python's salted ``hash``);
- the train run and the val run of a data set, each reading the whole source, agree without
  sharing anything but their settings;
- adding images to the data set never moves the others from one side to the other, and
  raising the fraction only moves images from train to val, so a val set seen once does not
  leak into training later;
- the same file listed twice (two ids, one file) cannot end up on both sides.

The price: the val part holds *about* ``val_fraction`` of the images (each image is one draw),
not exactly ``round(val_fraction * n)``; on a few images it can even be empty, which is refused.

Rejects go with the file they name; a reject that names no file (an annotation of an image the
file does not have) belongs to neither part, so both keep it: each part's run read the input
that holds it. Categories and K stay those of the whole source, so both parts are numbered
alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, NamedTuple

from samdetr.data.coco_source import CocoSource

__all__ = ["SourceParts", "split_source", "val_position"]


class SourceParts(NamedTuple):
    """The two parts of a split source (unpacks as ``train, val``)."""

    train: CocoSource
    val: CocoSource


def _check(val_fraction: Any, seed: Any) -> None:
    """TypeError unless ``val_fraction`` is a number and ``seed`` an int; ValueError unless
    0 < ``val_fraction`` < 1."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a number between 0 and 1, got {val_fraction!r}")
    if not (math.isfinite(val_fraction) and 0 < val_fraction < 1):
        raise ValueError(f"val_fraction must be strictly between 0 and 1 (the share of the "
                         f"images that go to val), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")


def val_position(file_name: str, seed: int) -> float:
    """Where ``file_name`` falls in [0, 1) for ``seed``: the image is in val when this is below
    the val fraction. The first 8 bytes of SHA-256 of ``"<seed>/<file_name>"``."""
    digest = hashlib.sha256(f"{seed}/{file_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_source(source: CocoSource, val_fraction: float, seed: int = 0) -> SourceParts:
    """``(train, val)``: the images of ``source`` whose :func:`val_position` is below
    ``val_fraction`` form val, the others train, each with its own annotations and rejects (in
    the source's order); ``source`` itself is left as it was.

    ValueError when ``val_fraction`` is not strictly between 0 and 1, or when one side would
    hold no image (too few images for the fraction: the message says what to change).
    """
    _check(val_fraction, seed)
    in_val = {info["id"]: val_position(info["file_name"], seed) < val_fraction
              for info in source.images}
    sides = [[i for i in source.images if in_val[i["id"]] is side] for side in (False, True)]
    for side, images in zip(("train", "val"), sides, strict=True):
        if not images:
            raise ValueError(
                f"{source.path}: val_fraction {val_fraction} with seed {seed} puts none of the "
                f"{len(source.images)} images in {side}; "
                + ("raise" if side == "val" else "lower")
                + " val_fraction or try another seed")
    train, val = (_part(source, images, val_fraction, seed, side)
                  for images, side in zip(sides, (False, True), strict=True))
    return SourceParts(train, val)


def _part(source: CocoSource, images: list[dict[str, Any]], val_fraction: float, seed: int,
          val: bool) -> CocoSource:
    """The source restricted to ``images`` (the val side when ``val``)."""
    ids = {info["id"] for info in images}
    rejects = [r for r in source.rejects if r.get("file_name") is None
               or (val_position(r["file_name"], seed) < val_fraction) is val]
    return dataclasses.replace(
        source,
        images=list(images),
        annotations={i: list(anns) for i, anns in source.annotations.items() if i in ids},
        categories=[dict(c) for c in source.categories],
        rejects=rejects,
    )
