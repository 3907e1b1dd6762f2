"""A seeded train/val split of one split (samdetr.data.source_split): a partition of the images,
decided per file name and seed, so the same whatever the order of the input, stable when images
are added, monotone in the fraction; annotations and rejects go with their images; bad
fractions and one-sided splits refused."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from samdetr.data.coco_source import CocoSource, source_from_document
from samdetr.data.source_split import split_source, val_position

NAMES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"]


def _source(names: list[str], order_seed: int | None = None) -> CocoSource:
    """One image per name (ids in name order) with one box each, listed in a shuffled order
    when ``order_seed`` is given; an annotation of an unknown image and a reject of a file."""
    images = [{"id": i, "file_name": n, "width": 8, "height": 8} for i, n in enumerate(names)]
    annotations = [{"id": i, "image_id": i, "category_id": 0, "bbox": [0, 0, 2, 2]}
                   for i in range(len(names))]
    annotations.append({"id": 10**6, "image_id": 10**6, "category_id": 0, "bbox": [0, 0, 2, 2]})
    if order_seed is not None:
        random.Random(order_seed).shuffle(images)
        random.Random(order_seed + 1).shuffle(annotations)
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": 0, "name": "thing"}]}
    return source_from_document(document, "one.json", "0" * 64)


def _files(source: CocoSource) -> list[str]:
    return [info["file_name"] for info in source.images]


def test_the_position_is_sha256_of_seed_and_file_name():
    digest = hashlib.sha256(b"0/c.jpg").digest()
    assert val_position("c.jpg", 0) == int.from_bytes(digest[:8], "big") / 2**64


def test_a_hand_checked_split():
    # Positions (seed 0): a .970, b .930, c .032, d .336, e .597, f .009. Pinned: a change of
    # the rule would move the images of every data set split with it between train and val.
    train, val = split_source(_source(NAMES), 0.5, seed=0)
    assert (_files(train), _files(val)) == (["a.jpg", "b.jpg", "e.jpg"],
                                            ["c.jpg", "d.jpg", "f.jpg"])
    assert _files(split_source(_source(NAMES), 0.3, seed=0).val) == ["c.jpg", "f.jpg"]
    # Seed 7: a .274, b .670, c .056, d .785, e .417, f .664.
    assert _files(split_source(_source(NAMES), 0.5, seed=7).val) == ["a.jpg", "c.jpg", "e.jpg"]


def test_each_part_has_its_images_boxes_and_rejects_and_the_same_categories():
    source = _source(NAMES)
    source.rejects.append({"kind": "image", "image_id": None, "annotation_id": None,
                           "file_name": "c.jpg", "reason": "missing_image"})
    train, val = split_source(source, 0.5, seed=0)
    for part in (train, val):
        ids = {info["id"] for info in part.images}
        assert set(part.annotations) == ids
        assert part.categories == source.categories and part.num_classes == source.num_classes
        assert part.source_sha256 == source.source_sha256
    # The reject of c.jpg goes with c.jpg (val); the unknown image's goes to both.
    assert [r["reason"].split(":")[0] for r in val.rejects] == ["unknown_image", "missing_image"]
    assert [r["reason"].split(":")[0] for r in train.rejects] == ["unknown_image"]
    assert len(source.images) == 6 and len(source.rejects) == 2  # the source is as it was


@pytest.mark.parametrize("fraction", [0, 1, -0.2, 1.5, math.nan, math.inf])
def test_a_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_source(_source(NAMES), fraction)


@pytest.mark.parametrize(("fraction", "seed", "message"), [
    (True, 0, "val_fraction must be a number"),
    ("0.2", 0, "val_fraction must be a number"),
    (0.2, 1.0, "seed must be an integer"),
    (0.2, False, "seed must be an integer"),
])
def test_a_fraction_or_seed_of_another_type_is_refused(fraction, seed, message):
    with pytest.raises(TypeError, match=message):
        split_source(_source(NAMES), fraction, seed)


def test_a_split_that_leaves_a_side_empty_is_refused_saying_what_to_change():
    with pytest.raises(ValueError, match=r"one.json: val_fraction 0.005 with seed 0 puts none "
                                         r"of the 6 images in val; raise val_fraction"):
        split_source(_source(NAMES), 0.005, seed=0)
    with pytest.raises(ValueError, match="puts none of the 6 images in train; lower"):
        split_source(_source(NAMES), 0.99, seed=0)


_name = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=12)
_names = st.lists(_name, min_size=1, max_size=40, unique=True)


@settings(max_examples=60, deadline=None)
@given(names=_names, fraction=st.floats(0.01, 0.99), seed=st.integers(-5, 10**9),
       order_seed=st.integers(0, 1000))
def test_every_image_lands_in_exactly_one_part_whatever_the_order(names, fraction, seed,
                                                                   order_seed):
    expected_val = {n for n in names if val_position(n, seed) < fraction}
    if not expected_val or expected_val == set(names):
        with pytest.raises(ValueError, match="puts none of the"):
            split_source(_source(names), fraction, seed)
        return
    train, val = split_source(_source(names), fraction, seed)
    assert set(_files(val)) == expected_val
    assert sorted(_files(train) + _files(val)) == sorted(names)  # a partition
    assert not set(_files(train)) & set(_files(val))
    # Deterministic, and the same from the images listed in another order.
    again = split_source(_source(names), fraction, seed)
    assert (_files(again.train), _files(again.val)) == (_files(train), _files(val))
    shuffled = split_source(_source(names, order_seed), fraction, seed)
    assert set(_files(shuffled.val)) == expected_val
    # Every box went with its image.
    for part in (train, val, shuffled.train, shuffled.val):
        boxes = {a["image_id"] for anns in part.annotations.values() for a in anns}
        assert boxes == {info["id"] for info in part.images}


def _val_or_none(names: list[str], fraction: float, seed: int) -> set[str] | None:
    """The val file names of a split of ``names``, None when one side would be empty."""
    try:
        return set(_files(split_source(_source(names), fraction, seed).val))
    except ValueError:
        return None


@settings(max_examples=40, deadline=None)
@given(names=st.lists(_name, min_size=6, max_size=40, unique=True), more=_names,
       low=st.floats(0.01, 0.69), seed=st.integers(0, 10**6))
def test_more_images_or_a_larger_fraction_never_move_an_image_out_of_val(names, more, low,
                                                                        seed):
    grown = names + [n for n in more if n not in names]
    val = _val_or_none(names, low, seed)
    val_grown = _val_or_none(grown, low, seed)
    val_high = _val_or_none(names, low + 0.3, seed)
    assume(val is not None and val_grown is not None and val_high is not None)
    assert val_grown & set(names) == val  # added images leave the others where they were
    assert val <= val_high  # a larger fraction only adds to val
