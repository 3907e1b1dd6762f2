"""Choosing, renaming and merging classes (samdetr.data.class_map): ids 0 .. K-1 in the order of
the resulting names, merged classes sharing an id, dropped boxes counted per class, emptied
images kept as negatives (or dropped on request), the source untouched, and every bad map
refused with a message that names the data set's classes."""

from __future__ import annotations

import copy
import json

import pytest

from samdetr.data.class_map import ClassMap, ClassSelection, apply_class_map
from samdetr.data.coco_source import CocoSource, source_from_document

# COCO-style ids with holes (K = 8 as read); image 4 has no box at all.
CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"},
              {"id": 3, "name": "dog", "supercategory": "animal"},
              {"id": 7, "name": "kitty", "supercategory": "pet"},
              {"id": 5, "name": "bus", "supercategory": "vehicle"}]
#: image id -> the category ids of its boxes, in annotation order.
BOXES = {1: [1, 3], 2: [7, 7], 3: [5], 4: []}


def _source() -> CocoSource:
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in BOXES]
    annotations = [{"image_id": i, "category_id": c, "bbox": [1, 1, 2, 2], "area": 4,
                    "iscrowd": 0} for i, cats in BOXES.items() for c in cats]
    for number, ann in enumerate(annotations, start=1):
        ann["id"] = number
    annotations.append({"id": 99, "image_id": 1, "category_id": 42, "bbox": [1, 1, 2, 2]})
    document = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    return source_from_document(document, "pets.json", "0" * 64)


def _labels(selection: ClassSelection) -> dict[int, list[int]]:
    """image id -> the new category ids of its boxes, for every image that is left."""
    return {info["id"]: [a["category_id"] for a in anns]
            for info, anns in selection.source.items()}


def test_as_read_the_ids_have_holes():
    source = _source()
    assert source.num_classes == 8 and [c["id"] for c in source.categories] == [1, 3, 5, 7]


def test_keep_orders_the_ids_and_a_shared_new_name_merges():
    source = _source()
    before = copy.deepcopy(source)
    selection = apply_class_map(source, ClassMap(keep=("dog", "cat", "kitty"),
                                                 rename={"kitty": "cat"}))
    # dog first in keep -> 0; cat -> 1; kitty renamed to cat -> the same 1. bus dropped.
    assert selection.source.categories == [
        {"id": 0, "name": "dog", "supercategory": "animal"},
        {"id": 1, "name": "cat", "supercategory": "animal"}]
    assert selection.source.num_classes == 2
    assert selection.ids == {"cat": 1, "dog": 0, "kitty": 1, "bus": None}
    assert _labels(selection) == {1: [1, 0], 2: [1, 1], 3: [], 4: []}
    assert selection.dropped_boxes == {"bus": 1}
    assert selection.emptied_images == 1  # image 3 held only a bus; it stays as a negative
    assert [i["id"] for i in selection.source.images] == [1, 2, 3, 4]
    # The annotations are copies: the source is as it was, rejects included.
    assert source == before
    assert selection.source.rejects == source.rejects
    assert [r["reason"] for r in selection.source.rejects] == ["unknown_category: 42"]
    assert selection.source.source_sha256 == source.source_sha256


def test_rename_alone_numbers_in_the_source_order_and_keeps_every_class():
    selection = apply_class_map(_source(), ClassMap(rename={"dog": "puppy", "kitty": "cat"}))
    # Source id order: cat (1), puppy (3), bus (5), kitty (7) -> merged into cat.
    assert [(c["id"], c["name"]) for c in selection.source.categories] == [
        (0, "cat"), (1, "puppy"), (2, "bus")]
    assert _labels(selection) == {1: [0, 1], 2: [0, 0], 3: [2], 4: []}
    assert selection.dropped_boxes == {} and selection.emptied_images == 0


def test_names_can_be_swapped():
    selection = apply_class_map(_source(), ClassMap(keep=("cat", "dog"),
                                                    rename={"cat": "dog", "dog": "cat"}))
    assert [(c["id"], c["name"]) for c in selection.source.categories] == [(0, "dog"), (1, "cat")]
    assert _labels(selection)[1] == [0, 1]


def test_a_merged_class_takes_its_first_members_supercategory():
    selection = apply_class_map(_source(), ClassMap(keep=("kitty", "cat"),
                                                    rename={"cat": "kitty"}))
    assert selection.source.categories == [{"id": 0, "name": "kitty", "supercategory": "pet"}]


def test_dropped_boxes_are_counted_per_class_zero_included():
    selection = apply_class_map(_source(), ClassMap(keep=("bus",)))
    assert selection.dropped_boxes == {"cat": 1, "dog": 1, "kitty": 2}
    assert selection.ids == {"cat": None, "dog": None, "bus": 0, "kitty": None}
    assert _labels(selection) == {1: [], 2: [], 3: [0], 4: []}
    assert selection.emptied_images == 2
    none_dropped = apply_class_map(_source(), ClassMap(keep=("cat", "dog", "bus")))
    assert none_dropped.dropped_boxes == {"kitty": 2}


def test_emptied_images_can_be_dropped_but_images_that_had_no_box_stay():
    selection = apply_class_map(_source(), ClassMap(keep=("bus",), drop_emptied_images=True))
    assert [i["id"] for i in selection.source.images] == [3, 4]
    assert selection.emptied_images == 2
    record = selection.record()
    assert (record["emptied_images"], record["images_removed"]) == (2, 2)


def test_the_record_is_json_and_says_what_was_asked_and_done():
    selection = apply_class_map(_source(), ClassMap(keep=["dog", "kitty"],
                                                    rename={"kitty": "cat"}))
    record = json.loads(json.dumps(selection.record()))
    assert record == {
        "keep": ["dog", "kitty"], "rename": {"kitty": "cat"}, "drop_emptied_images": False,
        "ids": {"cat": None, "dog": 0, "bus": None, "kitty": 1},
        "dropped_boxes": {"cat": 1, "bus": 1}, "emptied_images": 1, "images_removed": 0}


@pytest.mark.parametrize(("class_map", "message"), [
    (ClassMap(keep=("dog", "horse")), r"ClassMap.keep names \['horse'\], which the data set "
     r"does not have; its classes are \['cat', 'dog', 'bus', 'kitty'\]"),
    (ClassMap(rename={"Dog": "puppy"}), r"ClassMap.rename names \['Dog'\].*its classes are"),
    (ClassMap(keep=("dog",), rename={"cat": "kitty"}),
     r"ClassMap.rename renames \['cat'\], which ClassMap.keep drops"),
])
def test_a_map_that_does_not_fit_the_data_is_refused(class_map, message):
    with pytest.raises(ValueError, match=message):
        apply_class_map(_source(), class_map)


def test_a_data_set_with_two_classes_of_one_name_cannot_be_mapped_by_name():
    document = {"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "car"}, {"id": 2, "name": "car"}]}
    source = source_from_document(document, "twice.json", "0" * 64)
    with pytest.raises(ValueError, match=r"more than one class \['car'\]"):
        apply_class_map(source, ClassMap(keep=("car",)))


@pytest.mark.parametrize(("given", "error", "message"), [
    ({"keep": "dog"}, TypeError, "ClassMap.keep must be a list of class names"),
    ({"keep": ()}, ValueError, "ClassMap.keep is empty"),
    ({"keep": ("dog", "")}, TypeError, "every name in ClassMap.keep must be a non-empty"),
    ({"keep": ("dog", 3)}, TypeError, "every name in ClassMap.keep"),
    ({"keep": ("dog", "cat", "dog")}, ValueError, r"names \['dog'\] more than once"),
    ({"rename": [("dog", "puppy")]}, TypeError, "ClassMap.rename must be a mapping"),
    ({"rename": {"dog": " "}}, TypeError, r"ClassMap.rename\['dog'\] must be a non-empty"),
    ({"rename": {1: "dog"}}, TypeError, "every key of ClassMap.rename"),
    ({"drop_emptied_images": 1}, TypeError, "drop_emptied_images must be True or False"),
])
def test_a_malformed_map_is_refused_when_made(given, error, message):
    with pytest.raises(error, match=message):
        ClassMap(**given)


def test_only_a_class_map_is_applied():
    with pytest.raises(TypeError, match="class_map must be a ClassMap, got dict"):
        apply_class_map(_source(), {"keep": ["dog"]})


def test_keep_given_as_a_list_is_kept_as_a_tuple_and_rename_copied():
    rename = {"dog": "puppy"}
    class_map = ClassMap(keep=["dog"], rename=rename)
    rename["dog"] = "wolf"
    assert class_map.keep == ("dog",) and class_map.rename == {"dog": "puppy"}
    assert class_map.numbering(["cat", "dog"]) == {"dog": 0}
    assert class_map.new_name("dog") == "puppy" and class_map.new_name("cat") == "cat"
