"""What the training controls of ``trainer.*`` cost on one R50 training step: activation
checkpointing (memory for time), gradient accumulation and the moving average of the weights.

Setting: SAM-DETR-R50 (official config, 300 queries, 91 classes, ImageNet-shaped backbone with
its first stage frozen), one optimizer step (AdamW, clipping 0.1) on 2 images of ``--size``²
with 7 and 4 boxes, ``--threads`` threads. Each setting runs in a fresh subprocess (its peak
RSS its own) and reports the median step time over ``--steps`` steps after a warm-up, the
activations autograd kept for the backward pass of one batch (MiB, counted with saved-tensor
hooks: what checkpointing saves), the peak RSS (CPU) or the peak CUDA memory allocated (GPU).
Times are compared with the ``plain`` setting of the same run. Prints JSON, or a markdown table with
``--markdown``. The machine's speed drifts from minute to minute, so ``--rounds N`` runs every
setting N times, taking turns, and reports each setting's median over its rounds (and the
spread of its ratio to ``plain``, round by round).

    python -m bench.train_controls [--steps 3] [--rounds 1] [--threads 2] [--size 512]
        [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

#: name -> (activation_checkpointing parts, accumulate, ema decay)
SETTINGS = {
    "plain": ((), 1, 0.0),
    "checkpoint backbone": (("backbone",), 1, 0.0),
    "checkpoint encoder+decoder": (("encoder", "decoder"), 1, 0.0),
    "checkpoint all": (("backbone", "encoder", "decoder"), 1, 0.0),
    "accumulate 2 (2 x 1 image)": ((), 2, 0.0),
    "EMA": ((), 1, 0.9998),
}


def _batches(size: int, accumulate: int):
    import torch

    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, size, size, generator=generator)
    targets = []
    for n in (7, 4):
        centres = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
        targets.append({"labels": torch.randint(1, 91, (n,), generator=generator),
                        "boxes": torch.cat([centres, sizes], 1)})
    mask = torch.zeros(2, size, size, dtype=torch.bool)
    if accumulate == 1:
        return [(images, mask, targets)]
    return [(images[i:i + 1], mask[i:i + 1], targets[i:i + 1]) for i in range(2)]


def run_one(name: str, steps: int, threads: int, size: int, device: str) -> dict:
    import torch

    from bench.timing import median_seconds
    from samdetr.builder import build_criterion, build_model
    from samdetr.config import preset
    from samdetr.engine.activation_checkpointing import checkpoint_activations
    from samdetr.engine.ema import EmaConfig, ModelEma
    from samdetr.engine.optim import OptimConfig, build_optimizer
    from samdetr.engine.step import StepOptions, optimizer_step

    parts, accumulate, decay = SETTINGS[name]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    config = preset("sam_detr_r50_e50")
    model = build_model(config).to(dev).train()
    if parts:
        checkpoint_activations(model, parts)
    criterion = build_criterion(config).to(dev)
    optimizer = build_optimizer(model, OptimConfig())
    ema = ModelEma(model, EmaConfig(decay=decay)) if decay else None
    options = StepOptions(accumulate=accumulate, ema=ema)
    batches = [(i.to(dev), m.to(dev), [{k: v.to(dev) for k, v in t.items()} for t in ts])
               for i, m, ts in _batches(size, accumulate)]
    num_boxes = torch.tensor(11.0, device=dev)
    kept = []

    def step() -> None:
        optimizer_step(model, criterion, optimizer, batches, num_boxes, options)

    def count(tensor):
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        step()  # the first step, counted (and a warm-up)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = median_seconds(step, steps, dev)
    # Per batch: an accumulated step frees each batch's activations in its backward pass.
    row = {"setting": name, "step_s": seconds,
           "kept_activations_mib": sum(kept) / len(batches) / 2**20}
    if dev.type == "cuda":
        row["peak_cuda_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def summarise(rounds: list[list[dict]]) -> list[dict]:
    """One row per setting over ``rounds`` (each a list of rows, ``plain`` first): the median
    step and memory, and the ratio to ``plain`` of each round (min and max)."""
    out = []
    for i, first in enumerate(rounds[0]):
        runs = [r[i] for r in rounds]
        ratios = [r[i]["step_s"] / r[0]["step_s"] for r in rounds]
        row = {key: _median([run[key] for run in runs]) for key in first if key != "setting"}
        out.append({"setting": first["setting"], **row, "ratio": _median(ratios),
                    "ratio_min": min(ratios), "ratio_max": max(ratios)})
    return out


def _table(rows: list[dict]) -> str:
    memory = "peak_cuda_mib" if "peak_cuda_mib" in rows[0] else "peak_rss_mib"
    lines = ["| setting | step (s) | vs plain (rounds' range) | activations kept per batch (MiB) "
             f"| {'peak CUDA' if memory == 'peak_cuda_mib' else 'peak RSS'} (MiB) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['step_s']:.2f} | {r['ratio']:.2f}x "
                     f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
                     f"{r['kept_activations_mib']:.0f} | {r[memory]:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one setting
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.threads, args.size, args.device)))
        return
    from bench.timing import git_commit

    rounds = []
    for _ in range(args.rounds):
        rows = []
        for name in ["plain"] + [s for s in args.settings if s != "plain"]:
            done = subprocess.run(
                [sys.executable, "-m", "bench.train_controls", "--one", name, "--steps",
                 str(args.steps), "--threads", str(args.threads), "--size", str(args.size),
                 "--device", args.device], capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        rounds.append(rows)
    rows = summarise(rounds)
    out = {"commit": git_commit(), "device": args.device, "threads": args.threads,
           "size": args.size, "steps": args.steps, "rounds": args.rounds, "rows": rows}
    print(_table(rows) if args.markdown else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
