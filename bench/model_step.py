"""One training step (forward + criterion + backward) of the R50 models on this machine, against
the machine's own fp32 matmul peak measured in the same run.

Setting: batch 2 x 3 x 512 x 512, 300 queries, COCO's 91 logits, ``--threads`` threads. Each
(model, RoIAlign kernel) runs in a fresh subprocess, so its peak RSS is its own. Prints JSON:
per run the median step time, the step's GFLOP (torch's ``FlopCounterMode``, counted with
torchvision's RoIAlign, so the same for both kernels), the achieved GFLOP/s and its fraction of
the matmul peak measured in the same process, and the peak RSS.

    python -m bench.model_step [--steps 3] [--models sam smca baseline ms] [--threads 2]
        [--roi-align matmul torchvision]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODELS = {
    "sam": dict(decoder="sam", smca=False),
    "smca": dict(decoder="sam", smca=True),
    "baseline": dict(decoder="baseline", smca=False),
    "ms": dict(decoder="sam", smca=False, multiscale=True),  # R50-MS
}


def matmul_peak(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of a square matmul (the machine's practical peak for this run)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _setup(name: str, roi_align: str):
    import torch

    from samdetr.builder import build_criterion, build_model
    from samdetr.config import preset

    torch.manual_seed(0)
    config = preset("sam_detr_r50_e50").replace(**MODELS[name])
    if name != "baseline":
        config = config.replace(roi_align=roi_align)
    model = build_model(config).train()
    images = torch.randn(2, 3, 512, 512)
    mask = torch.zeros(2, 512, 512, dtype=torch.bool)
    generator = torch.Generator().manual_seed(1)
    targets = []
    for n in (7, 4):
        centres = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
        labels = torch.randint(1, 91, (n,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat([centres, sizes], 1)})
    return model, build_criterion(config), images, mask, targets


def run_one(name: str, roi_align: str, steps: int, threads: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    model, criterion, images, mask, targets = _setup(name, roi_align)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        losses = criterion(model(images, mask), targets, num_boxes=11.0)
        criterion.weighted_total(losses).backward()

    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The model's own FLOPs, the same whichever RoIAlign kernel runs: counted with
    # torchvision's kernel, which the counter does not see (it is a sampling op, not matmul
    # work); the matmul kernel's extra products are overhead of this run, not useful work.
    kernels = {m: m.roi_align for m in model.modules() if hasattr(m, "roi_align")}
    for module in kernels:
        module.roi_align = "torchvision"
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    for module, kernel in kernels.items():
        module.roi_align = kernel
    gflop = counter.get_total_flops() / 1e9
    median = sorted(times[1:])[len(times[1:]) // 2]
    peak = matmul_peak(threads)
    return {
        "model": name,
        "roi_align": roi_align if name != "baseline" else None,
        "step_s": round(median, 3),
        "all_step_s": [round(t, 3) for t in times],
        "gflop_per_step": round(gflop, 1),
        "achieved_gflop_s": round(gflop / median, 1),
        "matmul_peak_gflop_s": round(peak, 1),
        "fraction_of_peak": round(gflop / median / peak, 3),
        "peak_rss_gib": round(peak_kib / 2**20, 3),
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--roi-align", nargs="+", choices=["matmul", "torchvision"],
                        default=["matmul", "torchvision"])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.steps, args.threads)))
        return
    runs = [(m, k) for m in args.models for k in (args.roi_align if m != "baseline" else ["-"])]
    results = []
    for name, kernel in runs:
        cmd = [sys.executable, __file__, "--one", name, kernel, "--steps", str(args.steps),
               "--threads", str(args.threads)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    import torch

    print(json.dumps({"torch": torch.__version__, "batch": [2, 3, 512, 512], "queries": 300,
                      "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2))


if __name__ == "__main__":
    main()
