"""How fast a small SAM-DETR learns from random weights: validation AP50 against wall time.

    python -m bench.from_scratch --name gn96 --norm group_norm --layers 5 --size 96 \
        --queries 10 --budget 300

A plain single-process loop (the library alone: ``ShardDataset`` + ``RowDecoder`` +
``train_one_epoch``, COCO evaluation after every epoch) on synthetic shapes (1-2 per image,
128-192 px, objects 30-55% of the shorter side; written once under ``--data``). It prints one
line per epoch: name, epoch, seconds so far, training loss (total, focal, L1, GIoU of the last
layer), validation AP and AP50 in percent; it stops after the first epoch that ends past
``--budget`` seconds. For choosing a from-scratch recipe before running it through Ray Train.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from samdetr.builder import build_criterion, build_model
from samdetr.config import DetectorConfig
from samdetr.data.loader import RowDecoder, build_loader, set_epoch
from samdetr.data.samplers import EpochSampler
from samdetr.data.shards import ShardDataset
from samdetr.data.synthetic import write_synthetic_shards
from samdetr.data.transforms import train_transforms
from samdetr.engine.coco_eval import evaluate_detections
from samdetr.engine.evaluation import eval_loader, ground_truth
from samdetr.engine.loop import predict, train_one_epoch
from samdetr.engine.optim import OptimConfig, build_optimizer, build_scheduler
from samdetr.engine.reproducibility import seed_everything
from samdetr.engine.step import StepOptions


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="run", help="label of the printed lines")
    parser.add_argument("--norm", default="group_norm", help="backbone.norm")
    parser.add_argument("--layers", type=int, default=5, help="backbone.trainable_layers")
    parser.add_argument("--last-stage", type=int, default=4, help="backbone.last_stage")
    parser.add_argument("--lr", type=float, default=1e-3, help="lr of every parameter")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--size", type=int, default=96, help="shorter image side")
    parser.add_argument("--train-images", type=int, default=320)
    parser.add_argument("--val-images", type=int, default=80)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the model initialisation and augmentation")
    parser.add_argument("--budget", type=float, default=300, help="seconds of training")
    parser.add_argument("--loss", action="append", default=[], metavar="FIELD=VALUE",
                        help="a samdetr.config.LossConfig field, e.g. loss_class=5 (repeatable)")
    parser.add_argument("--data", type=Path, default=Path("bench_results/from_scratch_data"))
    return parser.parse_args()


def shards(args: argparse.Namespace) -> Path:
    root = args.data / f"{args.train_images}-{args.val_images}"
    options = {"image_size": (128, 192), "max_objects": 2, "object_size": (0.3, 0.55)}
    for split, count, seed in (("train", args.train_images, 0), ("val", args.val_images, 1)):
        if not (root / "shards" / split / "manifest.json").is_file():
            write_synthetic_shards(root / "data" / split, root / "shards" / split, count,
                                   seed=seed, split=split, **options)
    return root / "shards"


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    root = shards(args)
    seed_everything(args.seed)
    config = DetectorConfig.from_dict({"model": {
        "backbone": {"name": "resnet18", "norm": args.norm, "trainable_layers": args.layers,
                     "last_stage": args.last_stage},
        "hidden_dim": args.hidden, "num_heads": 8, "num_salient_points": 8,
        "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 4 * args.hidden,
        "dropout": 0.0, "num_queries": args.queries, "num_classes": 8,
    }, "loss": {k: float(v) for k, v in (item.split("=", 1) for item in args.loss)}})
    model, criterion = build_model(config), build_criterion(config)
    optim = OptimConfig(lr=args.lr, lr_backbone=args.lr, lr_drop_epochs=(10_000,))
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim)
    s = args.size
    decoder = RowDecoder(train_transforms(scales=[s - 16, s, s + 16], max_size=2 * s,
                                          crop_sizes=[s], crop_range=(s * 3 // 4, s)))
    dataset = ShardDataset(str(root / "train"), transform=decoder)
    loader = build_loader(dataset, decoder, args.batch, EpochSampler(len(dataset)))
    coco_gt = ground_truth(str(root / "val"))
    val = eval_loader(str(root / "val"), size=s, max_size=2 * s, batch_size=8)
    device, start, epoch = torch.device("cpu"), time.perf_counter(), 0
    while time.perf_counter() - start < args.budget:
        set_epoch(loader, epoch)
        stats = train_one_epoch(model, criterion, optimizer, loader, device, StepOptions())
        scheduler.step()
        metrics = evaluate_detections(coco_gt, predict(model, val, device))
        losses = " ".join(f"{stats[k]:.3f}" for k in ("loss", "loss_ce", "loss_bbox", "loss_giou"))
        print(f"{args.name} {epoch} {time.perf_counter() - start:.0f} {losses} "
              f"{100 * metrics['AP']:.1f} {100 * metrics['AP50']:.1f}", flush=True)
        epoch += 1


if __name__ == "__main__":
    main()
