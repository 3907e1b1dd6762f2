"""pipelines.preprocess chooses classes (data.keep_classes, data.rename_classes,
data.drop_emptied_images) and carves a seeded val split out of one split (data.val_fraction,
data.split_seed, data.split_from): the settings checked once with messages naming them, the
configs that compose to them, and the plans (no Ray) of the same small data set in each format.
The Ray run and its manifests are in test_preprocess_ray.py."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("hydra")

from hydra import compose, initialize_config_dir  # noqa: E402
from support.label_formats import CLASSES, write_coco, write_voc, write_yolo  # noqa: E402

from pipelines.cli.config_store import settings_dict  # noqa: E402
from pipelines.data.selection import selection_fields, selection_lines  # noqa: E402
from pipelines.data.shards import PreprocessSettings, plan_preprocess  # noqa: E402

CONF = Path(__file__).resolve().parents[3] / "conf"
COCO = {"annotations": "a.json", "images": "img"}


@pytest.mark.parametrize(("given", "error", "message"), [
    ({"keep_classes": "cat"}, TypeError, r"data.keep_classes must be a list of class names, "
     r"e.g. data.keep_classes=\[cat,dog\]"),
    ({"keep_classes": []}, TypeError, "data.keep_classes must be a list"),
    ({"keep_classes": ["cat", "cat"]}, ValueError, "names a class more than once"),
    ({"rename_classes": ["cat"]}, TypeError, r"data.rename_classes must map class names to new "
     r"names, e.g. data.rename_classes=\{kitty:cat\}"),
    ({"rename_classes": {1: "cat"}}, TypeError, "data.rename_classes must map"),
    ({"drop_emptied_images": True}, ValueError, "data.drop_emptied_images is read only with "
     "data.keep_classes or data.rename_classes"),
    ({"keep_classes": ["cat"], "drop_emptied_images": "yes"}, TypeError,
     "data.drop_emptied_images must be true or false"),
    ({"val_fraction": 1.0}, ValueError, "data.val_fraction must be a number strictly between"),
    ({"val_fraction": 0}, ValueError, "data.val_fraction must be a number strictly between"),
    ({"val_fraction": "0.2"}, ValueError, "data.val_fraction must be a number"),
    ({"val_fraction": 0.2, "split": "test"}, ValueError,
     "with data.val_fraction, split names the part the run writes: split=train or split=val"),
    ({"val_fraction": 0.2, "split_seed": 0.5}, TypeError, "data.split_seed must be an integer"),
    ({"split_from": "trainval"}, ValueError, "data.split_from is read only with "
     "data.val_fraction"),
    ({"val_fraction": 0.2, "split_from": "trainval"}, ValueError,
     "data.split_from is read only with data.format=yolo or voc: a COCO JSON is one split"),
])
def test_class_and_split_settings_are_checked_once_naming_the_setting(given, error, message):
    with pytest.raises(error, match=message):
        PreprocessSettings(output="out", **{**COCO, **given})


def test_without_them_the_source_is_used_as_it_is():
    selection = PreprocessSettings(output="out", split="test", **COCO).selection()
    assert selection.class_map is None and selection.val_fraction is None
    assert selection.read_split() == "test"


def _compose(overrides: list[str]) -> PreprocessSettings:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return PreprocessSettings.from_config(settings_dict(compose("preprocess", overrides)))


def test_the_command_line_composes_to_the_settings():
    settings = _compose(["data.keep_classes=[person,'traffic light',car]",
                         "data.rename_classes={traffic light:signal,car:vehicle}",
                         "data.val_fraction=0.2", "data.split_seed=3", "split=val"])
    assert settings.keep_classes == ("person", "traffic light", "car")
    assert settings.rename_classes == {"traffic light": "signal", "car": "vehicle"}
    assert (settings.val_fraction, settings.split_seed, settings.split_from) == (0.2, 3, None)
    assert settings.output.endswith("/shards/coco128/val")
    selection = settings.selection()
    assert selection.read_split() == "train" and selection.split == "val"
    assert selection.class_map.numbering(["car", "person", "traffic light", "dog"]) == {
        "person": 0, "traffic light": 1, "car": 2}
    yolo = _compose(["data=custom", "data.name=pets", "data.format=yolo",
                     "data.annotations=/d/data.yaml", "data.val_fraction=0.25",
                     "data.split_from=all", "split=train"]).selection()
    assert (yolo.read_split(), yolo.split, yolo.split_seed) == ("all", "train", 0)
    defaults = _compose([])
    assert (defaults.keep_classes, defaults.rename_classes, defaults.val_fraction) == (
        None, None, None)


def test_only_the_selection_keys_of_the_data_node_are_taken():
    node = {"name": "x", "format": "coco", "keep_classes": ["a"], "val_fraction": 0.5,
            "train_shards": "t"}
    assert selection_fields(node) == {"keep_classes": ["a"], "val_fraction": 0.5}


def _labels(plan) -> dict[str, list[int]]:
    """file stem -> the category ids of its boxes in the plan's source."""
    return {Path(info["file_name"]).stem: [a["category_id"] for a in anns]
            for info, anns in plan.source.items()}


def test_a_class_map_renumbers_merges_and_is_recorded(tmp_path):
    annotations, images = write_coco(tmp_path / "coco")  # a: car, bus; b: none; c: dog
    settings = PreprocessSettings(output=str(tmp_path / "out"), annotations=str(annotations),
                                  images=str(images), keep_classes=["dog", "car", "bus"],
                                  rename_classes={"car": "vehicle", "bus": "vehicle"})
    plan = plan_preprocess(settings)
    assert [(c["id"], c["name"]) for c in plan.source.categories] == [(0, "dog"), (1, "vehicle")]
    assert plan.source.num_classes == 2
    assert _labels(plan) == {"a": [1, 1], "b": [], "c": [0]}
    assert plan.selection["split"] is None
    assert plan.selection["classes"]["ids"] == {"bus": 1, "car": 1, "dog": 0}
    assert [len(t.items) for t in plan.tasks] == [3]
    assert selection_lines(plan.selection) == [
        "  classes         2   0 dog, 1 vehicle (bus + car); removed 0 boxes of 0 other "
        "classes, 0 images left without boxes (kept as negatives)"]


def test_dropped_classes_leave_negatives_or_go_with_their_images(tmp_path):
    annotations, images = write_coco(tmp_path / "coco")
    common = {"annotations": str(annotations), "images": str(images), "keep_classes": ["dog"]}
    kept = plan_preprocess(PreprocessSettings(output=str(tmp_path / "a"), **common))
    assert _labels(kept) == {"a": [], "b": [], "c": [0]}  # a lost its car and bus
    assert kept.selection["classes"]["dropped_boxes"] == {"bus": 1, "car": 1}
    dropped = plan_preprocess(PreprocessSettings(output=str(tmp_path / "b"),
                                                 drop_emptied_images=True, **common))
    assert _labels(dropped) == {"b": [], "c": [0]}  # b had no box to lose: it stays
    with pytest.raises(ValueError, match=r"ClassMap.keep names \['cat'\], which the data set "
                                         r"does not have; its classes are \['bus', 'car', 'dog'\]"):
        plan_preprocess(PreprocessSettings(output=str(tmp_path / "c"), **{
            **common, "keep_classes": ["dog", "cat"]}))


def test_a_seeded_split_writes_one_part_of_each_format(tmp_path):
    # Positions at seed 0: COCO's c.jpg and YOLO's images/train/c.jpg are below 0.5, the rest
    # above; VOC's JPEGImages/a.jpg is the one below (samdetr.data.source_split.val_position).
    annotations, images = write_coco(tmp_path / "coco")
    sources = {
        "coco": ({"annotations": str(annotations), "images": str(images)}, ["c"], ["a", "b"]),
        "yolo": ({"format": "yolo", "annotations": str(write_yolo(tmp_path / "yolo"))},
                 ["c"], ["a", "b"]),
        "voc": ({"format": "voc", "root": str(write_voc(tmp_path / "voc", split="trainval")),
                 "classes": CLASSES, "split_from": "trainval"}, ["a"], ["b", "c"]),
    }
    for name, (given, val, train) in sources.items():
        for part, stems in (("val", val), ("train", train)):
            plan = plan_preprocess(PreprocessSettings(
                output=str(tmp_path / f"{name}-{part}"), split=part, val_fraction=0.5,
                **given))
            assert sorted(_labels(plan)) == stems, (name, part)
            assert plan.source.categories == [
                {"id": i, "name": n, "supercategory": ""} for i, n in enumerate(CLASSES)]
            assert plan.selection["split"] == {
                "from": given.get("split_from", "train"), "part": part, "val_fraction": 0.5,
                "seed": 0, "images": {"train": len(train), "val": len(val)}}
            assert plan.tasks[0].file_name.startswith(f"{part}-00000-of-")


def test_the_split_comes_first_so_the_class_counts_are_the_parts(tmp_path):
    annotations, images = write_coco(tmp_path / "coco")
    plan = plan_preprocess(PreprocessSettings(
        output=str(tmp_path / "out"), annotations=str(annotations), images=str(images),
        split="train", val_fraction=0.5, keep_classes=["dog"]))
    # train holds a (car, bus) and b; c, the dog, is in val.
    assert _labels(plan) == {"a": [], "b": []}
    assert plan.selection["classes"]["dropped_boxes"] == {"bus": 1, "car": 1}
    assert plan.selection["classes"]["emptied_images"] == 1
    # val holds c alone, whose one box is a dog: keeping only buses and dropping emptied
    # images would leave the part without images.
    with pytest.raises(ValueError, match="data.drop_emptied_images removes every image"):
        plan_preprocess(PreprocessSettings(
            output=str(tmp_path / "none"), annotations=str(annotations), images=str(images),
            split="val", val_fraction=0.5, keep_classes=["bus"], drop_emptied_images=True))
