"""Input-pipeline throughput: classic per-file loader vs this project's shard pipeline.

Both produce the same thing from the same images: DETR's training augmentation (flip, then
multi-scale resize 480..800 <= 1333 or resize-crop-resize) and an ImageNet-normalised float
tensor with normalised cxcywh boxes, one image at a time, one thread, so images/s is per core.

(a) classic: open each JPEG file, PIL decode, PIL flip/resize/crop, to_tensor + normalize
    (what DETR's torchvision-style loader does);
(b) shards: rows from the Parquet shards (ShardDataset), RowDecoder with samdetr.data.transforms.

Also: preprocessing throughput (pipelines.preprocess on the local Ray) with 1 and 2 CPUs, end to
end and over the shard tasks alone (Ray's task timeline: first start to last end), and
row access only (no decoding) over shards of small row groups: a full random permutation
(EpochSampler) vs the block shuffle (BlockShuffleSampler), counting row-group reads.

    python -m bench.loader [--data DIR] [--epochs 2] [--copies 16] [--shard-mb 64]
    python -m bench.loader --access-only [--group-mb 1] [--cache-groups 4]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from samdetr.data.coco_rows import local_reader
from samdetr.data.coco_source import load_annotations
from samdetr.data.loader import RowDecoder
from samdetr.data.samplers import BlockShuffleSampler, EpochSampler
from samdetr.data.shard_writer import ShardSetOptions, write_shard_set
from samdetr.data.shards import ShardDataset
from samdetr.data.storage import resolve_fs
from samdetr.data.transforms import (
    DEFAULT_SCALES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    resized_shape,
    train_transforms,
)


def classic_sample(path: Path, boxes: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """DETR-style PIL augmentation of one file; returns the normalised image tensor."""
    image = Image.open(path).convert("RGB")
    boxes = boxes.clone()
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        boxes[:, [0, 2]] = image.width - boxes[:, [2, 0]]

    def resize(img, bx, size, max_size):
        w, h = resized_shape(img.width, img.height, size, max_size)
        scale = torch.tensor([w / img.width, h / img.height] * 2)
        return img.resize((w, h), Image.Resampling.BILINEAR), bx * scale

    if rng.random() < 0.5:
        image, boxes = resize(image, boxes, rng.choice(DEFAULT_SCALES), 1333)
    else:
        image, boxes = resize(image, boxes, rng.choice((400, 500, 600)), None)
        cw = rng.randint(min(384, image.width), min(600, image.width))
        ch = rng.randint(min(384, image.height), min(600, image.height))
        top, left = rng.randint(0, image.height - ch), rng.randint(0, image.width - cw)
        image = image.crop((left, top, left + cw, top + ch))
        boxes = (boxes - torch.tensor([left, top, left, top])).clamp(min=0)
        image, boxes = resize(image, boxes, rng.choice(DEFAULT_SCALES), 1333)
    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


def write_shards(data: Path, out: Path, **kwargs) -> Path:
    source = load_annotations(data / "annotations.json")
    fs, root = resolve_fs(out, None)
    write_shard_set(
        source,
        local_reader(data / "images"),
        lambda name: (data / "images" / name).stat().st_size,
        root,
        fs,
        ShardSetOptions(**kwargs),
    )
    return out


class CountingShardDataset(ShardDataset):
    """ShardDataset that counts row-group reads (cache misses) in ``reads``."""

    reads = 0

    def _row_group(self, k: int):
        if k not in self._cache:
            self.reads += 1
        return super()._row_group(k)


def measure_access(data: Path, epochs: int, group_mb: float, cache_groups: int) -> dict:
    """Rows/s and row-group reads per epoch of raw row access (no decoding), by sampler.

    Shards of ``group_mb`` hold one row group each (COCO scale: 16 MiB groups of ~100 images,
    thousands of groups); the cache keeps ``cache_groups`` groups, the block shuffle's windows
    are as many blocks. Files come from the page cache here: remote storage widens the gap.
    """
    with tempfile.TemporaryDirectory() as tmp:
        target = max(1, int(group_mb * 2**20))
        shard_dir = write_shards(data, Path(tmp) / "small", target_bytes=target)
        result: dict = {}
        for name in ("random", "block"):
            dataset = CountingShardDataset(shard_dir, cache_row_groups=cache_groups)
            if name == "random":
                sampler = EpochSampler(len(dataset), seed=0)
            else:
                sampler = BlockShuffleSampler.from_dataset(
                    dataset, seed=0, blocks_in_memory=cache_groups
                )
            start = time.perf_counter()
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                for i in sampler:
                    dataset[i]
            seconds = time.perf_counter() - start
            result[f"{name}_rows_per_s"] = round(epochs * len(dataset) / seconds, 1)
            result[f"{name}_group_reads_per_epoch"] = round(dataset.reads / epochs, 1)
        result.update(
            row_groups=len(dataset.row_group_spans),
            rows=len(dataset),
            cache_groups=cache_groups,
            epochs=epochs,
        )
    return result


def measure_loaders(data: Path, epochs: int) -> dict:
    torch.set_num_threads(1)
    source = load_annotations(data / "annotations.json")
    files = [
        (
            data / "images" / info["file_name"],
            torch.tensor([a["bbox"] for a in anns] or torch.zeros(0, 4).tolist()).reshape(-1, 4),
        )
        for info, anns in source.items()
    ]
    for _, boxes in files:
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    rng = random.Random(0)
    start = time.perf_counter()
    for _ in range(epochs):
        for path, boxes in files:
            classic_sample(path, boxes, rng)
    classic = epochs * len(files) / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        shard_dir = write_shards(data, Path(tmp) / "shards")
        decoder = RowDecoder(train_transforms(), seed=0)
        dataset = ShardDataset(shard_dir, transform=decoder)
        start = time.perf_counter()
        for epoch in range(epochs):
            decoder.set_epoch(epoch)
            for i in range(len(dataset)):
                dataset[i]
        shards = epochs * len(dataset) / (time.perf_counter() - start)
    return {
        "classic_images_per_s_per_core": round(classic, 1),
        "shards_images_per_s_per_core": round(shards, 1),
        "speedup": round(shards / classic, 2),
        "images": len(files),
        "epochs": epochs,
    }


def preprocess_throughput(data: Path, cpus: int, copies: int, shard_mb: float) -> dict:
    """pipelines.preprocess in a fresh process with a local Ray of ``cpus`` CPUs."""
    code = f"""
import json, os, sys, tempfile, time
from pathlib import Path
import ray
from pipelines.data.shards import PreprocessSettings, run_preprocess
data = Path({str(data)!r})
coco = json.loads((data / "annotations.json").read_text())
images, anns = [], []
for c in range({copies}):  # the same files under new ids: a bigger data set of real JPEGs
    images += [dict(i, id=i["id"] + c * 10**6) for i in coco["images"]]
    anns += [dict(a, id=a["id"] + c * 10**7, image_id=a["image_id"] + c * 10**6)
             for a in coco["annotations"]]
tmp = Path(tempfile.mkdtemp())
(tmp / "ann.json").write_text(json.dumps(dict(coco, images=images, annotations=anns)))
ray.init(num_cpus={cpus}, include_dashboard=False, log_to_driver=False)
config = PreprocessSettings(annotations=str(tmp / "ann.json"), images=str(data / "images"),
                          output=str(tmp / "out"), shard_size_mb={shard_mb})
start = time.perf_counter()
manifest = run_preprocess(config)
seconds = time.perf_counter() - start
# The shard tasks themselves, from Ray's task timeline (microseconds): first start to last end.
spans = [(e["ts"], e["ts"] + e["dur"]) for e in ray.timeline()
         if e.get("ph") == "X" and "_encode_task" in e.get("cat", "")]
phase = (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e6 if spans else None
print(json.dumps({{"images": manifest["num_rows"], "seconds": round(seconds, 2),
                  "tasks": len(spans), "task_phase_s": phase and round(phase, 2),
                  "task_busy_s": round(sum(e - s for s, e in spans) / 1e6, 2)}}))
"""
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["cpus"] = cpus
    result["images_per_s"] = round(result["images"] / result["seconds"], 1)
    if result["task_phase_s"]:
        result["task_phase_images_per_s"] = round(result["images"] / result["task_phase_s"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/coco128-dev"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--copies", type=int, default=16, help="coco128 repeats to preprocess")
    parser.add_argument(
        "--shard-mb",
        type=float,
        default=64.0,
        help="shard size for the preprocessing run (small shards make Ray Data's "
        "per-task overhead dominate)",
    )
    parser.add_argument("--skip-preprocess", action="store_true")
    parser.add_argument("--group-mb", type=float, default=1.0, help="row group size (access)")
    parser.add_argument("--cache-groups", type=int, default=4, help="cached groups (access)")
    parser.add_argument(
        "--access-only", action="store_true", help="only random vs block-shuffle row access"
    )
    args = parser.parse_args()
    report = {}
    if not args.access_only:
        report["loader"] = measure_loaders(args.data, args.epochs)
        print(json.dumps(report["loader"]), file=sys.stderr)
    report["access"] = measure_access(args.data, args.epochs, args.group_mb, args.cache_groups)
    print(json.dumps(report["access"]), file=sys.stderr)
    if args.access_only:
        print(json.dumps(report, indent=2))
        return
    if not args.skip_preprocess:
        report["preprocess"] = [
            preprocess_throughput(args.data, n, args.copies, args.shard_mb) for n in (1, 2)
        ]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
