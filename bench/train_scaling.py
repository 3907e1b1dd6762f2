"""Training throughput: Ray Train with 1 and 2 CPU workers, and a plain loop, on the same data.

    python -m bench.train_scaling [--images 288] [--epochs 3] [--out bench_results]

Writes synthetic shards once, then measures training images/s (the training part of each epoch,
without evaluation; median over the epochs after the first, which warms up):

- ``plain``: one process, no Ray — shard rows decoded and augmented by a DataLoader in the
  same process, ``samdetr.engine.loop.train_one_epoch`` with 1 torch thread;
- ``ray_1``: ``pipelines.train`` with 1 Ray Train worker (decoding in Ray Data tasks);
- ``ray_2``: the same with 2 workers (DDP over gloo), each 1 torch thread.

Reports the Ray Train loop's overhead against the plain loop (1 - ray_1 / plain; target < 10%)
and the scaling efficiency of 2 workers (ray_2 / (2 * ray_1)). On a 2-core machine the two
workers and Ray Data's decoding share the cores, so efficiency is bounded well below 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

MODEL = {
    "backbone": {"name": "resnet18"}, "hidden_dim": 64, "num_heads": 8, "num_salient_points": 8,
    "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 256, "dropout": 0.0,
    "num_queries": 30, "num_classes": 8,
}
TRAIN_TRANSFORM = {"scales": [160, 192], "max_size": 256, "crop_sizes": [160],
                   "crop_range": [128, 160]}


def _shards(root: Path, split: str, count: int, seed: int) -> str:
    from samdetr.data.synthetic import write_synthetic_shards

    write_synthetic_shards(root / "data" / split, root / "shards" / split, count, seed=seed,
                           split=split, image_size=(160, 256))
    return str(root / "shards" / split)


def plain_loop(train: str, epochs: int, batch_size: int) -> list[float]:
    """images/s per epoch of a single-process loop (decoding in the loop's own process)."""
    import torch

    from samdetr.builder import build_criterion, build_model
    from samdetr.config import DetectorConfig
    from samdetr.data.loader import RowDecoder, build_loader, set_epoch
    from samdetr.data.samplers import EpochSampler
    from samdetr.data.shards import ShardDataset
    from samdetr.data.transforms import train_transforms
    from samdetr.engine.loop import train_one_epoch
    from samdetr.engine.optim import OptimConfig, build_optimizer
    from samdetr.engine.reproducibility import seed_everything

    torch.set_num_threads(1)
    seed_everything(42)
    config = DetectorConfig.from_dict({"model": MODEL})
    model, criterion = build_model(config), build_criterion(config)
    optimizer = build_optimizer(model, OptimConfig())
    decoder = RowDecoder(train_transforms(**TRAIN_TRANSFORM))
    dataset = ShardDataset(train, transform=decoder)
    loader = build_loader(dataset, decoder, batch_size, EpochSampler(len(dataset)))
    rates = []
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        start = time.perf_counter()
        stats = train_one_epoch(model, criterion, optimizer, loader, torch.device("cpu"))
        rates.append(stats["images"] / (time.perf_counter() - start))
    return rates


def ray_train(root: Path, train: str, val: str, workers: int, epochs: int, batch: int) -> dict:
    """images/s per epoch reported by the real training pipeline (tracking off)."""
    from pipelines.training.run import run_training
    from pipelines.training.settings import TrainSettings
    from samdetr.checkpoint import read_checkpoint

    settings = TrainSettings.from_dict({
        "model": MODEL,
        "data": {"name": "bench", "train_shards": train, "val_shards": val,
                 "batch_size": batch, "eval_batch_size": 4, "shuffle_buffer": 16,
                 "train_transform": TRAIN_TRANSFORM,
                 "eval_transform": {"size": 160, "max_size": 256}},
        "trainer": {"run_name": f"bench-{workers}w", "storage_path": str(root / "ray"),
                    "epochs": epochs, "num_workers": workers,
                    "cpus_per_worker": 1.0 if workers == 1 else 0.5,
                    "num_pictures": 0, "log_every": 1000},
        "tracking": {"enabled": False},
    })
    start = time.perf_counter()
    summary = run_training(settings)
    wall = time.perf_counter() - start
    payload = read_checkpoint(summary["latest_checkpoint"])
    return {"rates": [h["images_per_s"] for h in payload["history"]], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=288)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="per worker")
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    with tempfile.TemporaryDirectory(prefix="samdetr-bench-") as tmp:
        root = Path(tmp)
        train = _shards(root, "train", args.images, seed=0)
        val = _shards(root, "val", 8, seed=1)
        plain = plain_loop(train, args.epochs, args.batch_size)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        one = ray_train(root, train, val, 1, args.epochs, args.batch_size)
        two = ray_train(root, train, val, 2, args.epochs, args.batch_size)
        ray.shutdown()

    def steady(rates: list[float]) -> float:
        return statistics.median(rates[1:] if len(rates) > 1 else rates)

    result = {
        "plain_images_per_s": round(steady(plain), 2),
        "ray_1_worker_images_per_s": round(steady(one["rates"]), 2),
        "ray_2_workers_images_per_s": round(steady(two["rates"]), 2),
        "per_epoch": {"plain": [round(r, 2) for r in plain],
                      "ray_1": [round(r, 2) for r in one["rates"]],
                      "ray_2": [round(r, 2) for r in two["rates"]]},
        "ray_fit_wall_s": {"1": round(one["wall_s"], 1), "2": round(two["wall_s"], 1)},
        "images": args.images, "epochs": args.epochs, "batch_per_worker": args.batch_size,
        "cpus": os.cpu_count(),
    }
    result["ray_overhead_vs_plain"] = round(
        1 - result["ray_1_worker_images_per_s"] / result["plain_images_per_s"], 3
    )
    result["scaling_efficiency_2_workers"] = round(
        result["ray_2_workers_images_per_s"] / (2 * result["ray_1_worker_images_per_s"]), 3
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_scaling.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
