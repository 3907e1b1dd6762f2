"""Forward and forward + backward time of the multiscale encoder's deformable-attention read,
one ``grid_sample`` per level (``sample_levels``) against one over the stacked, zero-padded
levels (``sample_levels_stacked``), at the R50-MS encoder's shapes: batch 2, 8 heads of 32
features, 3 levels (strides 8, 16, 32), 4 points, every token a query. Median of
``--repeats`` after a warm-up (the device synchronised around each call on CUDA); prints JSON.

    python -m bench.deformable_attention [--threads 2] [--repeats 3] [--device cpu|cuda]
        [--sizes 512x512 ...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.timing import median_seconds
from samdetr.model.deformable_attention import sample_levels, sample_levels_stacked

B, M, E, P = 2, 8, 32, 4


def measure(height: int, width: int, repeats: int, device: torch.device) -> dict:
    shapes = [(-(-height // s), -(-width // s)) for s in (8, 16, 32)]
    tokens = sum(h * w for h, w in shapes)
    generator = torch.Generator().manual_seed(0)
    value = torch.randn(B, tokens, M, E, generator=generator).to(device).requires_grad_(True)
    locations = torch.rand(B, tokens, M, 3, P, 2, generator=generator).to(device)
    locations.requires_grad_(True)
    weights = torch.rand(B, tokens, M, 3 * P, generator=generator).softmax(-1)
    weights = weights.view(B, tokens, M, 3, P).to(device).requires_grad_(True)
    out = {"levels": shapes, "queries": tokens}
    for name, sample in (("per_level", sample_levels), ("stacked", sample_levels_stacked)):
        upstream = torch.randn(B, tokens, M * E, generator=generator).to(device)

        def forward(sample=sample):
            with torch.no_grad():
                sample(value, shapes, locations, weights)

        def both(sample=sample, upstream=upstream):
            torch.autograd.grad(sample(value, shapes, locations, weights),
                                (value, locations, weights), upstream)

        out[name] = {"forward_ms": round(1000 * median_seconds(forward, repeats, device), 1),
                     "forward_backward_ms": round(1000 * median_seconds(both, repeats, device), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["512x512"],
                        help="image sizes HxW (800x1066: COCO's training size)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {size: measure(*map(int, size.split("x")), args.repeats, device)
               for size in args.sizes}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "device": name,
                      "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2))


if __name__ == "__main__":
    main()
