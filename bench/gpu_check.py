"""One bounded check of the library on a GPU: official numbers, bf16, training, speed, DDP.

    python -m bench.gpu_check [--device cuda] [--fixtures DIR] [--shards DIR]
        [--out FILE] [--parts fixture_fp32 ...] [--quick]

Parts, in this order, each timed and wrapped (a failure is recorded with its traceback and the
next part runs): fixture_fp32 (the official-tiny fixture in float32 with TF32 off, since TF32
rounds matmul/conv inputs to 10 bits, far above the 1e-5 tolerances: outputs, top-100, losses
and gradients vs the official code with the tolerances of tests/samdetr/test_official_fixture.py);
fixture_bf16 (the same under bf16 autocast: diffs for information; losses must be float32 and
finite, gradients finite); train_bf16 (the demo's small model on synthetic shards, --shards
DIR with train/ and val/, through samdetr.data.loader and train_one_epoch, then COCO AP); speed (R50
sam/smca/baseline training steps in bf16 and fp32 at 4x3x800x1066 and 2x3x512x512, peak CUDA
memory, sam eval images/s; bounded by --speed-seconds); ddp_nccl (a one-process DDP group,
NCCL on CUDA and gloo on CPU, and the object collectives of pipelines/training/loop.py; last, so
that a stuck NCCL call costs only itself).

A line per part goes to stderr, the JSON to stdout and to --out (rewritten after every part, so
a run cut short keeps what it measured). --quick: tiny sizes, for a CPU smoke test. The fixture
parts live in bench/gpu_fixture.py, next to this script.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import pickle
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from itertools import islice
from pathlib import Path

import torch

from bench.gpu_fixture import fixture_part, tf32
from samdetr.builder import build_criterion, build_model
from samdetr.config import DetectorConfig, preset
from samdetr.data.loader import RowDecoder, build_loader, set_epoch
from samdetr.data.samplers import EpochSampler
from samdetr.data.shards import ShardDataset, read_manifest
from samdetr.data.transforms import train_transforms
from samdetr.engine.loop import predict, train_one_epoch
from samdetr.engine.optim import OptimConfig, build_optimizer
from samdetr.engine.reproducibility import seed_everything
from samdetr.engine.step import StepOptions, autocast_context
from samdetr.model.postprocess import PostProcess

PARTS = ("fixture_fp32", "fixture_bf16", "train_bf16", "speed", "ddp_nccl")
# conf/model/small.yaml with 128-px transforms and lr 1e-3: this check's own fixed setting
# (the from-scratch recipe is conf/experiment/shapes_small.yaml)
SMALL = {"backbone": {"name": "resnet18"}, "hidden_dim": 64, "num_salient_points": 8,
         "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 256,
         "dropout": 0.0, "num_queries": 30}
TRAIN_TF = {"scales": [112, 128, 144], "max_size": 288, "crop_sizes": [128],
            "crop_range": [96, 128]}
EVAL_TF = {"size": 128, "max_size": 256}
DEMO_OPTIM = {"lr": 1e-3, "lr_backbone": 1e-3, "lr_drop_epochs": [100]}
R50 = {"sam": dict(decoder="sam", smca=False), "smca": dict(decoder="sam", smca=True),
       "baseline": dict(decoder="baseline", smca=False)}  # as bench/model_step.py
FULL = dict(variants=("base", "smca"), models=list(R50), epochs=30, max_steps=None, batch=8,
            workers=4, ddp_steps=4, warmup=3, steps=5, infer=(4, 800, 1066),
            sizes=[(4, 800, 1066), (2, 512, 512)])
QUICK = dict(FULL, variants=("base",), models=["sam"], epochs=2, max_steps=4, batch=4,
             workers=0, ddp_steps=2, warmup=1, steps=1, infer=(1, 96, 128), sizes=[(1, 96, 128)])


def say(line: str) -> None:
    print(f"[gpu_check] {line}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_peak(device: torch.device) -> None:
    """Free cached blocks and restart the peak-memory count."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    cuda = device.type == "cuda"
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None


# ----------------------------------------------------------------------------- training
def small_setup(args, cfg, device, model_overrides=None, optim_overrides=None):
    """(model, criterion, optimizer, train loader): the demo's small model on the shards;
    ``model_overrides`` / ``optim_overrides`` replace top-level fields of SMALL / DEMO_OPTIM
    (bench/attention_nan.py)."""
    classes = read_manifest(str(args.shards / "train"))["num_classes"]
    config = DetectorConfig.from_dict(
        {"model": {**SMALL, "num_classes": classes, **(model_overrides or {})}})
    model = build_model(config).to(device)
    decoder = RowDecoder(train_transforms(**TRAIN_TF))
    dataset = ShardDataset(str(args.shards / "train"), transform=decoder)
    loader = build_loader(dataset, decoder, cfg["batch"], EpochSampler(len(dataset)),
                          num_workers=cfg["workers"])
    optimizer = build_optimizer(
        model, OptimConfig.from_dict({**DEMO_OPTIM, **(optim_overrides or {})}))
    return model, build_criterion(config).to(device), optimizer, loader


def train_bf16(args, cfg, device) -> dict:
    from samdetr.engine.coco_eval import evaluate_detections  # pycocotools: only where needed
    from samdetr.engine.evaluation import eval_loader, ground_truth

    seed_everything(0)
    model, criterion, optimizer, loader = small_setup(args, cfg, device)
    fresh_peak(device)
    epochs, start = [], time.perf_counter()
    for epoch in range(cfg["epochs"]):
        set_epoch(loader, epoch)
        stats = train_one_epoch(model, criterion, optimizer, islice(loader, cfg["max_steps"]),
                                device, StepOptions(autocast_dtype=torch.bfloat16, log_every=10**6))
        epochs.append({"loss": round(stats["loss"], 4), "seconds": round(stats["seconds"], 2),
                       "images_per_s": round(stats["images"] / stats["seconds"], 1)})
        say(f"  epoch {epoch + 1}: {epochs[-1]}")
        if time.perf_counter() - start > args.train_seconds:
            break  # bounded: the next epoch waits for another run
    peak, t0 = peak_gib(device), time.perf_counter()
    val = eval_loader(str(args.shards / "val"), batch_size=cfg["batch"], **EVAL_TF)
    detections = predict(model, val, device, autocast_dtype=torch.bfloat16)
    predict_s = time.perf_counter() - t0
    metrics = evaluate_detections(ground_truth(str(args.shards / "val")), detections)
    down = epochs[-1]["loss"] < epochs[0]["loss"]
    return {
        "epochs": epochs, "batch": cfg["batch"], "loader_workers": cfg["workers"],
        "train_peak_mem_gib": peak, "predict_images_per_s": round(len(detections) / predict_s, 1),
        "median_images_per_s": statistics.median(e["images_per_s"] for e in epochs),
        "coco": {k: round(x, 4) for k, x in metrics.items()}, "loss_decreased": down,
        "ok": down or len(epochs) < 3,  # two random-init epochs need not lower the loss
        "summary": f"{len(epochs)} epochs, loss {epochs[0]['loss']} -> {epochs[-1]['loss']}, "
                   f"{epochs[-1]['images_per_s']} img/s, AP {metrics['AP']:.4f} AP50 "
                   f"{metrics['AP50']:.4f}, peak {peak} GiB",
    }


# ----------------------------------------------------------------------------- speed
def random_targets(batch: int, device: torch.device) -> list[dict]:
    generator, targets = torch.Generator().manual_seed(1), []
    for i in range(batch):
        n = (7, 4, 9, 5)[i % 4]
        boxes = torch.cat([torch.rand(n, 2, generator=generator) * 0.6 + 0.2,
                           torch.rand(n, 2, generator=generator) * 0.3 + 0.05], 1)
        targets.append({"labels": torch.randint(1, 91, (n,), generator=generator).to(device),
                        "boxes": boxes.to(device)})
    return targets


def speed_run(model, criterion, kind, shape, precision, cfg, device) -> dict:
    """Median seconds of training steps (forward + loss + backward + clip + AdamW) or of
    eval-mode batches (forward + top-100) after warm-up; peak memory from model on device."""
    fresh_peak(device)
    images = torch.randn(shape[0], 3, *shape[1:], device=device)
    mask = torch.zeros(shape[0], *shape[1:], dtype=torch.bool, device=device)
    targets = random_targets(shape[0], device)
    num_boxes = float(sum(len(t["labels"]) for t in targets))
    optimizer = build_optimizer(model, OptimConfig()) if kind == "train" else None
    times, totals = [], []
    model.train(kind == "train")
    with tf32(False if precision == "fp32" else None), torch.set_grad_enabled(kind == "train"):
        for step in range(cfg["warmup"] + cfg["steps"]):
            sync(device)
            t0 = time.perf_counter()
            with autocast_context(device, torch.bfloat16 if precision == "bf16" else None):
                outputs = model(images, mask)
            if kind == "infer":
                PostProcess(100)({k: outputs[k].float() for k in ("pred_logits", "pred_boxes")},
                                 torch.tensor([shape[1:]] * shape[0], device=device))
            else:
                totals.append(criterion.weighted_total(criterion(outputs, targets, num_boxes)))
                optimizer.zero_grad(set_to_none=True)
                totals[-1].backward()
                sync(device)
                t1 = time.perf_counter()  # forward + loss + backward: bench/model_step.py's step
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                optimizer.step()
            sync(device)
            if step >= cfg["warmup"]:
                times.append((time.perf_counter() - t0, t1 - t0 if kind == "train" else None))
    model.zero_grad(set_to_none=True)
    if not all(torch.isfinite(t) for t in totals):
        raise FloatingPointError(f"non-finite loss in {kind} {precision} {shape}")
    median = statistics.median(t for t, _ in times)
    out = {"model_kind": kind, "precision": precision, "batch": [shape[0], 3, *shape[1:]],
           "median_s": round(median, 4), "all_s": [round(t, 4) for t, _ in times],
           "peak_mem_gib": peak_gib(device)}
    if kind == "train":
        out["fwd_bwd_s"] = round(statistics.median(t for _, t in times), 4)
    else:
        out["images_per_s"] = round(shape[0] / median, 2)
    return out


def speed(args, cfg, device) -> dict:
    runs, skipped, start = [], [], time.perf_counter()
    for name in args.models or cfg["models"]:
        config = preset("sam_detr_r50_e50").replace(**R50[name])
        torch.manual_seed(0)
        model, criterion = build_model(config).to(device), build_criterion(config)
        todo = [("train", shape, p) for shape in cfg["sizes"] for p in args.precisions]
        todo += [("infer", cfg["infer"], p) for p in args.precisions if name == "sam"]
        for kind, shape, precision in todo:
            tag = f"{name} {kind} {precision} {'x'.join(map(str, shape))}"
            if time.perf_counter() - start > args.speed_seconds:
                skipped.append(tag)  # bounded: what is left waits for another run
                continue
            runs.append({"model": name, **speed_run(model, criterion, kind, shape, precision,
                                                    cfg, device)})
            say(f"  {tag}: {runs[-1]['median_s']} s, {runs[-1]['peak_mem_gib']} GiB")
        del model, criterion
    return {
        "runs": runs, "skipped_for_time": skipped, "ok": bool(runs) and not skipped,
        "note": "fp32: TF32 off; bf16: autocast, fp32 weights, PyTorch's TF32 defaults; "
                "cudnn.benchmark off; the CPU bench (bench/model_step.py) times fwd_bwd_s",
        "summary": ", ".join(f"{r['model']} {r['model_kind']} {r['precision']} "
                             f"{'x'.join(map(str, r['batch']))} {r['median_s']} s" for r in runs),
    }


# ----------------------------------------------------------------------------- DDP
def ddp_nccl(args, cfg, device) -> dict:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from samdetr.engine.coco_eval import evaluate_detections
    from samdetr.engine.evaluation import eval_loader, ground_truth
    from samdetr.model.criterion import distributed_mean

    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as probe:  # a free port for the TCP rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1, timeout=timedelta(seconds=60))
    try:
        if device.type == "cuda":  # NCCL's object collectives use the current device
            torch.cuda.set_device(device)
        seed_everything(0)
        model, criterion, optimizer, loader = small_setup(args, cfg, device)
        plain = copy.deepcopy(model)  # the same steps without DDP, for comparison
        plain_optimizer = build_optimizer(plain, OptimConfig.from_dict(DEMO_OPTIM))
        ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        batches = list(islice(loader, cfg["ddp_steps"]))
        stats = train_one_epoch(ddp, criterion, optimizer, batches, device,
                                StepOptions(autocast_dtype=torch.bfloat16,
                                            world_reduce=distributed_mean))
        alone = train_one_epoch(plain, criterion, plain_optimizer, batches, device,
                                StepOptions(autocast_dtype=torch.bfloat16))
        with torch.no_grad():
            param_diff = max(float((p - q).abs().max())
                             for p, q in zip(model.parameters(), plain.parameters(), strict=True))
        # As pipelines/training/loop.py evaluates: detections to rank 0, scored, broadcast.
        val = list(islice(eval_loader(str(args.shards / "val"), batch_size=4, **EVAL_TF), 2))
        detections = predict(ddp.module, val, device, autocast_dtype=torch.bfloat16)
        parts: list = [None]
        dist.gather_object(detections, parts, dst=0)
        gathered = [d for part in parts for d in part]
        same = pickle.dumps(gathered) == pickle.dumps(detections)  # numpy arrays: exact
        box = [evaluate_detections(ground_truth(str(args.shards / "val")), gathered)]
        dist.broadcast_object_list(box, src=0)
        everyone: list = [None]
        dist.all_gather_object(everyone, stats)
        same = same and everyone == [stats] and isinstance(box[0]["AP"], float)
        result = {
            "backend": backend, "steps": stats["steps"], "loss": stats["loss"],
            "loss_without_ddp": alone["loss"], "param_max_abs_diff_vs_no_ddp": param_diff,
            "broadcast_AP": box[0]["AP"], "object_collectives_equal": same, "ok": same,
            "summary": f"{backend}: {stats['steps']} steps, loss {stats['loss']:.4f} (without "
                       f"DDP {alone['loss']:.4f}, params differ by {param_diff:.1e}), object "
                       f"collectives {'ok' if same else 'DIFFER'}",
        }
        say(f"  {result['summary']}")  # logged before the teardown, in case that hangs
        return result
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- main
def make_shards(root: Path) -> Path:
    """The demo's kind of synthetic data as shard sets ``root/{train,val}`` (without Ray)."""
    from samdetr.data.synthetic import write_synthetic_shards

    options = dict(image_size=(128, 192), max_objects=2, object_size=(0.3, 0.55))
    for split, count, seed in (("train", 160, 0), ("val", 32, 1)):
        write_synthetic_shards(root / f"{split}-images", root / split, count, seed=seed,
                               split=split, **options)
    say(f"synthetic shards in {root}")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--fixtures", type=Path, default=Path("../shared/fixtures/official-tiny"))
    parser.add_argument("--shards", type=Path, help="folder with train/ and val/ shard sets "
                        "(default: synthetic ones made in a temporary folder)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--models", nargs="+", choices=list(R50), help="speed: R50 variants")
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"],
                        default=["bf16", "fp32"])
    parser.add_argument("--train-seconds", type=float, default=50.0)
    parser.add_argument("--speed-seconds", type=float, default=80.0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    args = parser.parse_args()
    if args.shards is None and {"train_bf16", "ddp_nccl"} & set(args.parts):
        args.shards = make_shards(Path(tempfile.mkdtemp(prefix="gpu_check-")))
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cfg = QUICK if args.quick else FULL
    env = {"python": platform.python_version(), "torch": torch.__version__, "quick": args.quick,
           "cuda": torch.version.cuda, "device": str(device), "argv": sys.argv[1:]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_mem_gib=round(props.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version(),
                   tf32_defaults=[torch.backends.cuda.matmul.allow_tf32,
                                  torch.backends.cudnn.allow_tf32])
    report = {"environment": env, "parts": {}}
    start = time.perf_counter()
    parts = {"fixture_fp32": lambda: fixture_part(args, cfg, device, bf16=False),
             "fixture_bf16": lambda: fixture_part(args, cfg, device, bf16=True),
             "train_bf16": lambda: train_bf16(args, cfg, device),
             "speed": lambda: speed(args, cfg, device),
             "ddp_nccl": lambda: ddp_nccl(args, cfg, device)}
    for name in (p for p in PARTS if p in args.parts):
        say(f"{name} ...")
        t0 = time.perf_counter()
        try:
            result = parts[name]()
        except Exception:  # recorded; the next part still runs
            result = {"ok": False, "error": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        fresh_peak(device)
        report["parts"][name] = result
        detail = result.get("summary") or result["error"].strip().splitlines()[-1]
        say(f"{name}: {'OK' if result['ok'] else 'FAIL'} in {result['seconds']} s: {detail}")
        report["ok"] = all(p["ok"] for p in report["parts"].values())
        report["total_s"] = round(time.perf_counter() - start, 1)
        # The library must run without the pipeline stack (absent on the GPU machine).
        report["environment"]["pipeline_modules_loaded"] = sorted(
            m for m in ("ray", "mlflow", "hydra", "omegaconf") if m in sys.modules)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    sys.exit(0 if report.get("ok") else 1)


if __name__ == "__main__":
    main()
