"""Registered versions whose held-out scores are known in advance, for the registry tests.

The held-out set is labelled with the top detections of one tiny random model ("good"): scored
on it, that model finds its own boxes (a high AP) while another random init ("poor") finds next
to nothing. Checkpoints name the data they were "trained" on by manifest checksum, as training
writes them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from samdetr.builder import build_model
from samdetr.checkpoint import save_checkpoint
from samdetr.data.coco_rows import local_reader
from samdetr.data.coco_source import load_annotations
from samdetr.data.shard_writer import ShardSetOptions, write_shard_set
from samdetr.data.shards import manifest_checksum
from samdetr.data.storage import resolve_fs
from samdetr.data.synthetic import make_synthetic_coco, write_synthetic_shards
from samdetr.inference import Predictor
from support.tiny import tiny_config

EVAL = {"size": 64, "max_size": 96}
NUM_CLASSES = 8  # labels 0..7 cover the synthetic ids 1, 3, 7


def _checkpoint(path: Path, seed: int, categories: list[dict], train_sha: str) -> str:
    torch.manual_seed(seed)
    config = tiny_config(num_classes=NUM_CLASSES)
    return str(save_checkpoint(path, build_model(config).eval(), config, eval_transform=EVAL,
                               eval_batch_size=4, categories=categories,
                               data={"train_manifest_sha256": train_sha,
                                     "val_manifest_sha256": train_sha},
                               mlflow_run_id=""))


def _write_shards(data_dir: Path, shard_dir: Path) -> None:
    fs, out = resolve_fs(str(shard_dir), None)
    write_shard_set(load_annotations(data_dir / "annotations.json"),
                    local_reader(data_dir / "images"),
                    lambda name: (data_dir / "images" / name).stat().st_size, out, fs,
                    ShardSetOptions(split="val"))


def _label_with(predictor: Predictor, data_dir: Path, keep: int) -> None:
    """Replace the annotations with each image's ``keep`` best detections of ``predictor``."""
    document = json.loads((data_dir / "annotations.json").read_text())
    ids = {c["id"] for c in document["categories"]}
    annotations = []
    for image in document["images"]:
        result = predictor([(data_dir / "images" / image["file_name"]).read_bytes()])[0]
        kept = 0
        for box, label in zip(result["boxes"].tolist(), result["labels"].tolist(), strict=True):
            x1, y1, x2, y2 = box
            if int(label) not in ids or x2 - x1 < 2 or y2 - y1 < 2:
                continue
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"],
                                "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            kept += 1
            if kept == keep:
                break
    document["annotations"] = annotations
    (data_dir / "annotations.json").write_text(json.dumps(document))


def build_case(root: Path) -> dict:
    """Held-out shards and four checkpoints: ``good``, ``poor``, ``other_classes`` (another
    category set) and ``on_holdout`` (trained on the held-out set)."""
    train = root / "train_shards"
    write_synthetic_shards(root / "train_data", train, 2, seed=5, image_size=(48, 56),
                           max_objects=2)
    train_sha = manifest_checksum(train)
    data = root / "holdout_data"
    make_synthetic_coco(data, 8, seed=9, image_size=(48, 64), max_objects=2)
    categories = [{"id": c["id"], "name": c["name"]}
                  for c in json.loads((data / "annotations.json").read_text())["categories"]]
    good = _checkpoint(root / "good.pt", 0, categories, train_sha)
    _label_with(Predictor.from_checkpoint(good, device="cpu"), data, keep=2)
    holdout = root / "holdout_shards"
    _write_shards(data, holdout)
    holdout_sha = manifest_checksum(holdout)
    renamed = [{"id": c["id"], "name": c["name"] + "-x"} for c in categories]
    out = {
        "root": root, "holdout": str(holdout), "holdout_sha": holdout_sha, "train_sha": train_sha,
        "categories": categories, "good": good,
        "poor": _checkpoint(root / "poor.pt", 1, categories, train_sha),
        "other_classes": _checkpoint(root / "other.pt", 2, renamed, train_sha),
        "on_holdout": _checkpoint(root / "on_holdout.pt", 3, categories, holdout_sha),
        "jpeg": str(next((data / "images").iterdir())),
    }
    shutil.rmtree(root / "train_data")
    return out
