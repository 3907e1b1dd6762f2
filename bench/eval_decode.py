"""What decoding validation images in worker processes buys and costs (eval_loader_workers).

For each number of loader processes, on coco128-dev's photos at the evaluation size (800 px,
batch 4): the evaluation loader alone (decode, resize, batch: how fast it could feed a device),
as seconds to its first batch (process start included) and images/s after it; images/s of a
whole evaluation pass with the small model on this CPU; and the memory of the loader's
processes (PSS: shared pages counted once). All figures come from one run.

    python -m bench.eval_decode [--workers 0 2] [--images 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.loader import write_shards
from samdetr.builder import build_model  # noqa: E402
from samdetr.config import BackboneConfig, DetectorConfig, ModelConfig  # noqa: E402
from samdetr.engine.evaluation import eval_loader  # noqa: E402
from samdetr.engine.loop import predict  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-dev"
SMALL = ModelConfig(backbone=BackboneConfig(name="resnet18"), hidden_dim=64,
                    num_salient_points=8, num_encoder_layers=2, num_decoder_layers=2,
                    dim_feedforward=256, dropout=0.0, num_queries=30, num_classes=91)


def _pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _loader_only(shards: str, workers: int, images: int) -> dict:
    """Seconds to the first batch (process start included), then images/s after it."""
    loader = eval_loader(shards, batch_size=4, num_workers=workers)
    start, seen, pss, first = time.perf_counter(), 0, [], None
    iterator = iter(loader)
    for batch in iterator:
        if first is None:
            first = time.perf_counter()
            pss = [_pss_mib(p.pid) for p in getattr(iterator, "_workers", [])]
        else:
            seen += batch[0].shape[0]
        if seen >= images:
            break
    rate = seen / (time.perf_counter() - first)
    return {"first_batch_s": round(first - start, 2), "images_per_s": round(rate, 2),
            "loader_process_pss_mib": [round(v, 1) for v in pss]}


def _with_model(shards: str, workers: int, images: int) -> dict:
    torch.manual_seed(0)
    model = build_model(DetectorConfig(model=SMALL))
    loader = eval_loader(shards, batch_size=4, num_workers=workers)
    batches = []
    start = time.perf_counter()
    for batch in loader:  # predict() on the batches as they come, as training does
        batches.append(batch)
        predict(model, [batch], torch.device("cpu"))
        if sum(b[0].shape[0] for b in batches) >= images:
            break
    seen = sum(b[0].shape[0] for b in batches)
    return {"images_per_s": round(seen / (time.perf_counter() - start), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        shards = str(write_shards(DATA, Path(tmp) / "shards", split="val"))
        results = {}
        for workers in args.workers:
            results[workers] = {
                "loader_only": _loader_only(shards, workers, args.images),
                "with_model": _with_model(shards, workers, args.images),
            }
    print(json.dumps({"images": args.images, "threads": args.threads,
                      "by_loader_processes": results}, indent=2))


if __name__ == "__main__":
    main()
