"""Do PyTorch's fused attention kernels give non-finite values where the math kernel does not?

    python bench/attention_kernels.py [--device cpu|cuda]

One scaled_dot_product_attention forward + backward at the encoder's shapes (batch 2, 8 heads,
300 queries, 400 keys, 32 features per head; the second image's last 150 keys are padding),
for every combination of: padding mask as an additive float mask with -inf, the same with the
dtype's most negative finite value, or a boolean mask; keys per head or one key tensor expanded
over the heads (stride 0, as the salient-point cross-attention passes them); query scale 1, 100
and 1e4 (logits up to ~1e4 after a gradient spike); float32 and bfloat16. Each fused kernel of
the device (CPU: flash; CUDA: flash, memory-efficient, cuDNN) is compared with the math kernel:
one JSON line per case with the non-finite outputs/gradients of each and the largest
difference. A kernel that cannot run a case records its error.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H, L, S, E = 2, 8, 300, 400, 32


def _run(backend, q, k, v, mask, grad, expand):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    keys = k.expand(-1, H, -1, -1) if expand else k
    with sdpa_kernel([backend]):
        out = F.scaled_dot_product_attention(q, keys, v, attn_mask=mask)
    out.backward(grad)
    return [out, q.grad, k.grad, v.grad]


def _mask(kind: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    pad = torch.zeros(B, S, dtype=torch.bool, device=device)
    pad[1, 250:] = True
    if kind == "bool":
        return (~pad)[:, None, None, :]
    fill = float("-inf") if kind == "-inf" else torch.finfo(dtype).min
    return torch.zeros(B, S, dtype=dtype, device=device).masked_fill(pad, fill)[:, None, None, :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    device = torch.device(parser.parse_args().device)
    fused = [SDPBackend.FLASH_ATTENTION]
    if device.type == "cuda":
        fused += [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    generator = torch.Generator().manual_seed(0)
    for dtype, scale, expand, kind in itertools.product(
            (torch.float32, torch.bfloat16), (1.0, 100.0, 1e4), (False, True),
            ("-inf", "finfo.min", "bool")):
        def draw(*shape, dtype=dtype):
            return torch.randn(*shape, generator=generator).to(device, dtype)

        q, k, v, grad = draw(B, H, L, E) * scale, draw(B, 1 if expand else H, S, E), \
            draw(B, H, S, E), draw(B, H, L, E)
        mask = _mask(kind, dtype, device)
        reference = _run(SDPBackend.MATH, q, k, v, mask, grad, expand)
        case = {"dtype": str(dtype).split(".")[-1], "query_scale": scale,
                "keys": "expanded" if expand else "per head", "mask": kind,
                "math_nonfinite": [not torch.isfinite(t).all().item() for t in reference]}
        for backend in fused:
            try:
                result = _run(backend, q, k, v, mask, grad, expand)
            except RuntimeError as err:
                case[backend.name] = {"error": str(err).splitlines()[0][:120]}
                continue
            case[backend.name] = {
                "nonfinite": [not torch.isfinite(t).all().item() for t in result],
                "max_diff": max((a.float() - b.float()).abs().max().item()
                                for a, b in zip(result, reference, strict=True)),
            }
        print(json.dumps(case), flush=True)


if __name__ == "__main__":
    main()
