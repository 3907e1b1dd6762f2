"""Forward and forward + backward time of one RoIAlign, torchvision's kernel against
``samdetr.model.roi_align.roi_align_boxes``, at the Semantics Aligner's shapes: 300 boxes per
image, batch 2, 256 channels, 7 x 7 bins, on the feature maps of 512-px and 800 x 1066 images.
Median of ``--repeats`` after a warm-up (on CUDA the device is synchronised around each
call); prints JSON.

    python -m bench.roi_align [--threads 2] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torchvision.ops import roi_align

from bench.timing import median_seconds
from samdetr.model.roi_align import roi_align_boxes

MAPS = {"512px": (16, 16), "800x1066": (25, 34)}


def measure(height: int, width: int, repeats: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    b, c, q, r = 2, 256, 300, 7
    features = torch.randn(b, c, height, width, generator=generator).to(device)
    features.requires_grad_(True)
    size = torch.tensor([width, height], dtype=torch.float32)
    centres = torch.rand(b, q, 2, generator=generator) * size
    sides = (torch.rand(b, q, 2, generator=generator) * 0.6 + 0.05) * size
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], dim=-1).to(device)
    index = torch.arange(b, dtype=boxes.dtype, device=device).repeat_interleave(q)
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

        out[name] = {"forward_ms": round(1000 * median_seconds(forward, repeats, device), 1),
                     "forward_backward_ms": round(1000 * median_seconds(both, repeats, device), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {name: measure(h, w, args.repeats, device) for name, (h, w) in MAPS.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "device": name,
                      "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2))


if __name__ == "__main__":
    main()
