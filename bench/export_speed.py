"""CPU inference speed of a SAM-DETR in PyTorch and exported to ONNX in ONNX Runtime, in one run
on the same images, and what the export costs.

Each model (random weights, seed 0) is exported with :func:`samdetr.export.exporter.export_model`
(post-processing in the graph, top 100) and both runtimes then detect on the same generated,
normalised images of ``--size`` x 4/3 ``--size`` pixels (the eval transform's landscape shape),
one image per call, after one warm-up call each, the two runtimes taking turns call by call:
the PyTorch model's forward + ``PostProcess`` under ``torch.inference_mode`` against one ONNX
Runtime session run, both on ``--threads`` threads. Prints a table (images/s, ms per image,
the export's time and file size, the largest logit difference between the two) and the same
as JSON.

    python -m bench.export_speed [--models small r50] [--size 640] [--images 4] [--repeats 3]
        [--threads 2]

Models: ``small`` (conf/model/small.yaml's: ResNet-18, width 64, 2 + 2 layers, 30 queries,
8 classes) and ``r50`` (the ``sam_detr_r50_e50`` preset: ResNet-50, 300 queries, 91 classes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.timing import git_commit
from samdetr.batching import pad_images
from samdetr.builder import build_model
from samdetr.config import BackboneConfig, DetectorConfig, preset
from samdetr.export.exporter import export_model
from samdetr.export.parity import generated_images
from samdetr.export.runtime import OnnxDetector
from samdetr.model.postprocess import PostProcess

NUM_TOP = 100


def model_config(name: str) -> DetectorConfig:
    r50 = preset("sam_detr_r50_e50")
    if name == "r50":
        return r50
    if name == "small":  # conf/model/small.yaml
        return r50.replace(backbone=BackboneConfig(name="resnet18"), hidden_dim=64,
                           num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=256,
                           dropout=0.0, num_queries=30, num_classes=8)
    raise ValueError(f"unknown model {name!r}: small or r50")


def _per_image_seconds(runs: dict, calls: list[tuple], repeats: int) -> dict[str, list[float]]:
    """Wall time of each call per runtime: ``repeats`` passes over ``calls`` after one warm-up
    call each, the runtimes taking turns call by call, so that a change in the machine's load
    (it is shared) falls on both alike."""
    for run in runs.values():
        run(*calls[0])
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for args in calls:
            for name, run in runs.items():
                start = time.perf_counter()
                run(*args)
                times[name].append(time.perf_counter() - start)
    return times


def measure(name: str, size: int, count: int, repeats: int, threads: int, folder: Path) -> dict:
    torch.manual_seed(0)
    config = model_config(name)
    model = build_model(config).eval()
    path = folder / f"{name}.onnx"
    result = export_model(model, path, config=config, postprocess=True, num_top=NUM_TOP)
    detector = OnnxDetector(path, threads=threads)
    height, width = size, round(size * 4 / 3)
    calls = []
    for image in generated_images([(height, width)] * count, seed=1):
        batch, mask = pad_images([image])
        calls.append((batch, mask, torch.tensor([[height, width]])))
    post = PostProcess(NUM_TOP)

    def torch_run(batch, mask, sizes):
        with torch.inference_mode():
            return post(model(batch, mask), sizes)

    gap = 0.0
    for batch, mask, sizes in calls:
        with torch.inference_mode():
            reference = model(batch, mask)["pred_logits"]
        exported = detector(batch, mask, sizes)["pred_logits"]
        gap = max(gap, float((exported - reference).abs().max()))
    row = {"model": name, "image": f"{height}x{width}", "exporter": result.exporter,
           "export_s": round(result.seconds, 1),
           "file_mb": round(path.stat().st_size / 2**20, 1), "max_logit_diff": gap}
    measured = _per_image_seconds({"pytorch": torch_run, "onnxruntime": detector}, calls,
                                  repeats)
    for runtime, times in measured.items():
        row[runtime] = {"images_per_s": round(len(times) / sum(times), 2),
                        "median_ms": round(1000 * statistics.median(times), 1)}
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | image | runtime | images/s | ms/image (median) | export | file | "
             "max abs logit diff |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for runtime in ("pytorch", "onnxruntime"):
            speed = row[runtime]
            lines.append(f"| {row['model']} | {row['image']} | {runtime} | "
                         f"{speed['images_per_s']} | {speed['median_ms']} | "
                         f"{row['export_s']} s ({row['exporter']}) | {row['file_mb']} MB | "
                         f"{row['max_logit_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small", "r50"])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for name in args.models:
        model_config(name)  # an unknown name fails before any export
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="samdetr-export-bench-") as folder:
        rows = [measure(name, args.size, args.images, args.repeats, args.threads, Path(folder))
                for name in args.models]
    print(table(rows))
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
                      "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                      "threads": args.threads, "images": args.images, "repeats": args.repeats,
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
