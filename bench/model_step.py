"""Seconds per training step (forward + loss + backward) and peak RSS of the R50 models.

Setting of the issue: batch 2 x 3 x 512 x 512, 300 queries, COCO's 91 logits, this machine's
threads. Each model runs in a fresh subprocess so its peak RSS is its own. Prints JSON.

    python bench/model_step.py [--steps 3] [--models sam smca baseline] [--threads 2]
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
}
# The official implementation on this machine (issue #2), for the same step.
OFFICIAL = {
    "sam": {"step_s": 13.6, "peak_rss_gib": 3.0},
    "smca": {"step_s": 15.2, "peak_rss_gib": 3.4},
}


def run_one(name: str, steps: int, threads: int) -> dict:
    import torch

    from samdetr.builder import build_criterion, build_model
    from samdetr.config import preset

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = preset("sam_detr_r50_e50").replace(**MODELS[name])
    model = build_model(config).train()
    criterion = build_criterion(config)
    images = torch.randn(2, 3, 512, 512)
    mask = torch.zeros(2, 512, 512, dtype=torch.bool)
    generator = torch.Generator().manual_seed(1)
    targets = []
    for n in (7, 4):
        centres = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
        labels = torch.randint(1, 91, (n,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat([centres, sizes], 1)})
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        outputs = model(images, mask)
        losses = criterion(outputs, targets, num_boxes=11.0)
        criterion.weighted_total(losses).backward()
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step = sorted(times[1:])[len(times[1:]) // 2]
    result = {
        "model": name,
        "step_s": round(step, 3),
        "steps": steps,
        "all_step_s": [round(t, 3) for t in times],
        "peak_rss_gib": round(peak_kib / 2**20, 3),
        "threads": threads,
    }
    if name in OFFICIAL:
        result["official_step_s"] = OFFICIAL[name]["step_s"]
        result["ratio_to_official"] = round(step / OFFICIAL[name]["step_s"], 3)
        result["official_peak_rss_gib"] = OFFICIAL[name]["peak_rss_gib"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--one", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.threads)))
        return
    results = []
    for name in args.models:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    import torch

    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "batch": [2, 3, 512, 512],
                "queries": 300,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
