"""Forward and forward + backward time of one RoIAlign, torchvision's kernel against
``samdetr.model.roi_align.roi_align_boxes``, at the Semantics Aligner's shapes: 300 boxes per
image, batch 2, 256 channels, 7 x 7 bins, on the feature maps of 512-px and 800 x 1066 images.
Median of ``--repeats`` after a warm-up; prints JSON.

    python bench/roi_align.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torchvision.ops import roi_align

from samdetr.model.roi_align import roi_align_boxes

MAPS = {"512px": (16, 16), "800x1066": (25, 34)}


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(height: int, width: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    b, c, q, r = 2, 256, 300, 7
    features = torch.randn(b, c, height, width, generator=generator, requires_grad=True)
    size = torch.tensor([width, height], dtype=torch.float32)
    centres = torch.rand(b, q, 2, generator=generator) * size
    sides = (torch.rand(b, q, 2, generator=generator) * 0.6 + 0.05) * size
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], dim=-1)
    index = torch.arange(b, dtype=boxes.dtype).repeat_interleave(q)
    rois = torch.cat([index[:, None], boxes.reshape(-1, 4)], dim=1)
    kernels = {"torchvision": lambda: roi_align(features, rois, r, 1.0, -1, True),
               "matmul": lambda: roi_align_boxes(features, boxes, r)}
    out = {}
    for name, kernel in kernels.items():
        upstream = torch.randn_like(kernel())

        def forward(kernel=kernel):
            with torch.no_grad():
                kernel()

        def both(kernel=kernel, upstream=upstream):
            torch.autograd.grad(kernel(), features, upstream)

        out[name] = {"forward_ms": round(1000 * _median(forward, repeats), 1),
                     "forward_backward_ms": round(1000 * _median(both, repeats), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {name: measure(h, w, args.repeats) for name, (h, w) in MAPS.items()}
    print(json.dumps({"torch": torch.__version__, "threads": args.threads,
                      "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2))


if __name__ == "__main__":
    main()
