"""pipelines.preprocess reads COCO JSON, YOLO and Pascal VOC (data.format): the settings each
format needs, checked once with messages that name the fix; the configs that compose to them;
and the plan (no Ray) made from the same labels in each format. The Ray run of the YOLO and VOC
trees is in test_preprocess_ray.py."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("hydra")

from hydra import compose, initialize_config_dir  # noqa: E402
from support.label_formats import CLASSES, LABELS, write_coco, write_voc, write_yolo  # noqa: E402

from pipelines.cli.config_store import settings_dict  # noqa: E402
from pipelines.data.shards import PreprocessSettings, plan_preprocess  # noqa: E402
from pipelines.data.sources import source_fields  # noqa: E402

CONF = Path(__file__).resolve().parents[3] / "conf"


def _settings(**given) -> PreprocessSettings:
    return PreprocessSettings(output="out", **given)


@pytest.mark.parametrize(("given", "message"), [
    ({}, "data.annotations must be the COCO instances JSON"),
    ({"annotations": "a.json"}, "data.images must be the folder the JSON's file names"),
    ({"format": "yolo"}, "data.annotations must be the YOLO dataset YAML"),
    ({"format": "voc"}, "data.root must be the VOC folder holding Annotations/"),
    ({"format": "Pascal"}, "data.format must be one of coco, yolo, voc, got 'Pascal'"),
    ({"format": "yolo", "annotations": "d.yaml", "images": "img"},
     "data.images is read only with data.format=coco, not with data.format=yolo"),
    ({"format": "voc", "root": "voc", "annotations": "a.json"},
     "data.annotations is read only with data.format=coco or data.format=yolo"),
    ({"annotations": "a.json", "images": "img", "root": "r"},
     "data.root is read only with data.format=voc"),
    ({"format": "yolo", "annotations": "d.yaml", "classes": ["a"]},
     "data.classes is read only with data.format=voc; yolo data names its classes itself"),
    ({"format": "voc", "root": "r", "classes": "cat,dog"}, "must be a list of class names"),
    ({"format": "voc", "root": "r", "classes": []}, "must be a list of class names"),
    ({"format": "voc", "root": "r", "classes": ["a", "b", "a"]}, "more than once"),
])
def test_each_format_needs_its_settings_and_refuses_the_others(given, message):
    with pytest.raises(ValueError, match=message):
        _settings(**given)


def test_the_classes_are_kept_in_order_as_a_tuple():
    settings = _settings(format="voc", root="r", classes=["dog", "cat"])
    assert settings.classes == ("dog", "cat")
    assert settings.source_settings() == {"annotations": None, "images": None, "root": "r",
                                          "classes": ("dog", "cat")}


def _compose(overrides: list[str]) -> PreprocessSettings:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return PreprocessSettings.from_config(settings_dict(compose("preprocess", overrides)))


def test_the_configs_compose_to_each_format():
    yolo = _compose(["data=custom", "data.name=mine", "data.format=yolo",
                     "data.annotations=s3://b/mine/data.yaml", "split=val"])
    assert (yolo.format, yolo.annotations, yolo.images, yolo.split) == (
        "yolo", "s3://b/mine/data.yaml", None, "val")
    assert yolo.output.endswith("/shards/mine/val")
    voc = _compose(["data=custom", "data.name=pets", "data.format=voc", "data.root=/d/pets",
                    "data.classes=[cat,dog]"])
    assert (voc.root, voc.classes, voc.annotations) == ("/d/pets", ("cat", "dog"), None)
    # From a COCO data group, another format reads only its own keys: the group's COCO
    # paths stay in the composed config but are not the run's settings.
    coco128 = _compose(["data.format=voc", "data.root=/d/pets"])
    assert (coco128.annotations, coco128.images, coco128.root) == (None, None, "/d/pets")
    assert _compose([]).format == "coco"
    with pytest.raises(ValueError, match="data.classes is read only with data.format=voc"):
        _compose(["data.classes=[a]"])


def test_the_data_node_gives_the_format_and_what_it_reads():
    node = {"name": "x", "format": "yolo", "annotations": "d.yaml", "images": "img",
            "root": None, "classes": None, "train_shards": "t"}
    assert source_fields(node) == {"format": "yolo", "annotations": "d.yaml", "classes": None}
    assert source_fields({"annotations": "a.json", "images": "i"})["format"] == "coco"


def _plans(tmp_path, uri: bool = False):
    """The preprocessing plans of the same labels as COCO JSON, YOLO and VOC."""
    prefix = "file://" if uri else ""
    annotations, images = write_coco(tmp_path / "coco")
    data_yaml = write_yolo(tmp_path / "yolo")
    voc = write_voc(tmp_path / "voc")
    given = {
        "coco": {"annotations": f"{prefix}{annotations}", "images": f"{prefix}{images}"},
        "yolo": {"format": "yolo", "annotations": f"{prefix}{data_yaml}"},
        "voc": {"format": "voc", "root": f"{prefix}{voc}", "classes": CLASSES},
    }
    return {name: plan_preprocess(PreprocessSettings(output=str(tmp_path / f"out-{name}"),
                                                     **settings))
            for name, settings in given.items()}


def _without_file_names(plan):
    return [(info["id"], info["width"], info["height"],
             [(a["id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in anns])
            for info, anns in plan.source.items()]


def test_every_format_plans_the_same_images_and_boxes(tmp_path):
    plans = _plans(tmp_path)
    coco = plans["coco"]
    assert len(coco.source.images) == len(LABELS)
    for name in ("yolo", "voc"):
        assert _without_file_names(plans[name]) == _without_file_names(coco), name
        assert plans[name].source.categories == coco.source.categories, name
        assert [len(t.items) for t in plans[name].tasks] == [len(t.items) for t in coco.tasks]
    assert [i["file_name"] for i in plans["yolo"].source.images][0] == "images/train/a.jpg"
    assert [i["file_name"] for i in plans["voc"].source.images][0] == "JPEGImages/a.jpg"
    # Workers open the images where the source's file names are relative to.
    assert plans["yolo"].images_uri == str(tmp_path / "yolo")
    assert plans["voc"].images_uri == str(tmp_path / "voc")


def test_uris_stay_uris_for_the_workers(tmp_path):
    plans = _plans(tmp_path, uri=True)
    assert plans["coco"].images_uri == f"file://{tmp_path}/coco/images"
    assert plans["yolo"].images_uri == f"file://{tmp_path}/yolo"
    assert plans["voc"].images_uri == f"file://{tmp_path}/voc"


def test_strict_refuses_a_bad_label_before_any_image_is_encoded(tmp_path):
    voc = write_voc(tmp_path / "voc")
    xml = voc / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<name>car</name>", "<name>cat</name>"))
    settings = PreprocessSettings(output=str(tmp_path / "out"), format="voc", root=str(voc),
                                  classes=CLASSES, strict=True)
    with pytest.raises(ValueError, match="unknown_category: 'cat'"):
        plan_preprocess(settings)
