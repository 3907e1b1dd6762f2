"""Images/s of ``python -m pipelines.predict`` in one process (``engine=local``) against the Ray
Data engine (``engine=ray``: decoding in Ray Data, a pool of model actors), in one run on the
same images and the same checkpoint.

The images are ``--images`` generated JPEGs of ``--width`` x ``--height`` (random shapes on a
noisy background, seeded); the model is ``conf/model/small.yaml``'s (ResNet-18, width 64, 30
queries, random weights, seed 0) saved as a checkpoint with an eval size of ``--size``. The
local engine runs first, then a local Ray is started (``--cpus`` CPUs, its start timed apart)
and the Ray engine runs with ``--actors`` model actors of ``--cpus-per-actor`` CPUs each (Ray
gives each actor as many torch threads as CPUs); both with ``--batch-size``, every detection
kept (score threshold 0, top 10: both engines must find as many), no pictures. The local engine
runs once per ``--local-threads`` value (torch threads in this process). Each engine's time is
its whole ``run_predict`` call (the model's load, the actors' start); the Ray engine's steady
rate counts from its first result.
Prints a table and writes the same as JSON to ``bench_results/predict_speed.json``.

    python -m bench.predict_speed [--images 48] [--width 640] [--height 480] [--size 320]
        [--batch-size 4] [--actors 2] [--cpus-per-actor 1] [--cpus 2] [--local-threads 2 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bench.timing import git_commit
from pipelines.inference.predict import PredictSettings, run_predict
from samdetr.builder import build_model
from samdetr.checkpoint import save_checkpoint
from samdetr.config import BackboneConfig, preset

RESULTS = Path(__file__).resolve().parents[1] / "bench_results"


def write_images(folder: Path, count: int, width: int, height: int) -> None:
    """``count`` JPEGs: noise with a few filled rectangles and ellipses, seeded per image."""
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        noise = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        image = Image.fromarray(noise.numpy())
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = (int(v) for v in torch.randint(0, min(width, height) // 2, (2,),
                                                  generator=generator))
            size = int(torch.randint(20, min(width, height) // 2, (1,), generator=generator))
            colour = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=generator))
            shape = draw.rectangle if i % 2 else draw.ellipse
            shape([x, y, x + size, y + size], fill=colour)
        image.save(folder / f"img{i:04d}.jpg", quality=90)


def write_checkpoint(path: Path, size: int) -> str:
    torch.manual_seed(0)
    config = preset("sam_detr_r50_e50").replace(  # conf/model/small.yaml
        backbone=BackboneConfig(name="resnet18"), hidden_dim=64, num_encoder_layers=2,
        num_decoder_layers=2, dim_feedforward=256, dropout=0.0, num_queries=30, num_classes=8)
    return str(save_checkpoint(path, build_model(config), config,
                               eval_transform={"size": size, "max_size": round(size * 5 / 3)}))


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--local-threads", type=int, nargs="+",
                        default=[torch.get_num_threads()])
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows = []
    with tempfile.TemporaryDirectory(prefix="samdetr-predict-bench-") as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        write_images(folder / "images", args.images, args.width, args.height)
        checkpoint = write_checkpoint(folder / "checkpoint.pt", args.size)
        common = {"checkpoint": checkpoint, "images": str(folder / "images"),
                  "pictures": False, "batch_size": args.batch_size, "score_threshold": 0.0,
                  "num_top": 10}
        for threads in args.local_threads:
            torch.set_num_threads(threads)
            start = time.perf_counter()
            local = run_predict(PredictSettings(output=str(folder / f"local{threads}"),
                                                **common))
            seconds = time.perf_counter() - start
            rows.append({"engine": f"local (1 process, {threads} torch threads)",
                         "seconds": round(seconds, 1),
                         "images_per_s": round(args.images / seconds, 2),
                         "detections": local["detections"]})
        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False)
        ray_start = time.perf_counter() - start
        try:
            start = time.perf_counter()
            distributed = run_predict(PredictSettings(
                output=str(folder / "ray"), engine="ray", actors=args.actors,
                cpus_per_actor=args.cpus_per_actor, gpus_per_actor=0, **common))
            seconds = time.perf_counter() - start
        finally:
            ray.shutdown()
        first = distributed["first_result_s"]
        steady = (args.images - args.batch_size) / max(distributed["seconds"] - first, 1e-9)
        rows.append({"engine": f"ray ({args.actors} actors x {args.cpus_per_actor:g} CPU)",
                     "seconds": round(seconds, 1),
                     "images_per_s": round(args.images / seconds, 2),
                     "detections": distributed["detections"], "ray_init_s": round(ray_start, 1),
                     "first_result_s": first, "steady_images_per_s": round(steady, 2)})
    print("| engine | images | seconds | images/s | after the first result: images/s | "
          "detections |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['engine']} | {args.images} | {row['seconds']} | {row['images_per_s']} | "
              f"{row.get('steady_images_per_s', '')} | {row['detections']} |")
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
              "torch": torch.__version__, "ray": ray.__version__, "args": vars(args),
              "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "predict_speed.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
