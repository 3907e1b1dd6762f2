"""The synthetic shapes set of ``make demo`` and the convergence study, as shard sets.

Both train the small from-scratch recipe (``experiment=shapes_small``) on the same kind of data:
coloured squares, discs and triangles (at most :data:`SHAPES["max_objects"]` per image) on a
textured background, generated as COCO-format folders (:mod:`pipelines.make_synthetic`) and
turned into shards with Ray Data (:mod:`pipelines.preprocess`). Nothing is redone that exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.data.shards import PreprocessSettings, format_summary, run_preprocess
from pipelines.data.synthetic import write_synthetic

# How the images look (samdetr.data.synthetic.make_synthetic_coco's keywords).
SHAPES: dict[str, Any] = {"image_size": [128, 192], "max_objects": 2, "object_size": [0.3, 0.55]}
SEEDS = {"train": 0, "val": 1}  # different images in the two splits


def shapes_shards(root: Path, counts: dict[str, int], verbose: bool = False) -> dict[str, Path]:
    """``{split: shard folder}`` under ``root/shards`` for ``counts = {split: images}``,
    generated under ``root/data`` first. Ray must be up (Ray Data writes the shards)."""
    folders = {}
    for split, count in counts.items():
        if split not in SEEDS:
            raise ValueError(f"split must be one of {sorted(SEEDS)}, got {split!r}")
        data, shards = root / "data" / split, root / "shards" / split
        if not (data / "annotations.json").is_file():
            summary = write_synthetic({"out_dir": str(data), "num_images": count,
                                       "seed": SEEDS[split], **SHAPES})
            print(f"   {split}: {summary['num_images']} images, {summary['num_annotations']} "
                  f"boxes -> {data}", flush=True)
        if not (shards / "manifest.json").is_file():
            manifest = run_preprocess(PreprocessSettings(
                annotations=str(data / "annotations.json"), images=str(data / "images"),
                output=str(shards), split=split, verbose=verbose,
            ))
            print(format_summary(manifest), flush=True)
        folders[split] = shards
    return folders


def check_counts(counts: Any, setting: str) -> None:
    """``counts`` is ``{train: N, val: M}`` with N, M >= 1 (or None); ValueError naming
    ``setting`` otherwise."""
    if counts is not None and (
            not isinstance(counts, dict) or set(counts) != {"train", "val"}
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                   for n in counts.values())):
        raise ValueError(f"{setting} must be {{train: N, val: M}} with N, M >= 1, "
                         f"got {counts!r}")


def shapes_for(data: Any, counts: dict[str, int], setting: str, verbose: bool = False) -> None:
    """Shapes into the shard folders ``data`` (``DataSettings``) names, which must be local and
    ``<root>/shards/train`` and ``<root>/shards/val``; ``setting`` names the config asking."""
    if data.name != "synthetic":
        raise ValueError(f"{setting} generates synthetic shapes, but data.name is {data.name!r}: "
                         f"set {setting}=null to train on the configured shards")
    folders = {"train": data.train_shards, "val": data.val_shards}
    for split, folder in folders.items():
        if Path(folder).name != split or Path(folder).parent.name != "shards" or "://" in folder:
            raise ValueError(f"{setting} writes local shards into '<root>/shards/{split}'; "
                             f"data.{split}_shards={folder!r} is not such a folder")
    root = Path(folders["train"]).parent.parent
    if Path(folders["val"]).parent.parent != root:
        raise ValueError(f"{setting} needs data.train_shards and data.val_shards under "
                         "the same '<root>/shards/' folder")
    shapes_shards(root, counts, verbose)
