"""Where do PyTorch's fused attention kernels give wrong or non-finite gradients?

    python -m bench.attention_kernels [--device cpu|cuda] [--sweep]

Every case is one scaled_dot_product_attention forward + backward at the encoder's shapes
(batch 2, 8 heads, 300 queries, 400 keys, 32 features per head), on the math kernel and on each
fused kernel of the device (CPU: flash; CUDA: flash, memory-efficient, cuDNN); one JSON line per
case. A kernel that cannot run a case records its error.

Default: the mask cases. The second image's last 150 keys are padding, as an additive float mask
with -inf, the same with the dtype's most negative finite value, or a boolean mask; keys per
head or one key tensor expanded over the heads (stride 0, as the salient-point cross-attention
passes them); query scale 1, 100 and 1e4; float32 and bfloat16. Each fused kernel's outputs and
gradients are compared with the math kernel's (non-finite values, largest difference).

``--sweep``: the logit scale. Queries are drawn with standard deviation 1 to 1e8 (the logits'
standard deviation is about the same; their largest magnitude, printed, about 6 times that),
no mask, float32 and bfloat16. Every kernel, the math kernel included, is compared with the
math kernel in float64: the relative error (norm of the difference over the reference's norm)
of the output and of the query, key and value gradients, their largest magnitude (the
reference's too: where the softmax saturates its query and key gradients vanish, and a relative
error over a vanishing norm says little) and the count of non-finite values.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H, L, S, E = 2, 8, 300, 400, 32
SWEEP_SCALES = (1.0, 1e2, 1e3, 1e4, 1e5, 3e5, 1e6, 3e6, 1e7, 1e8)


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


def fused_backends(device: torch.device) -> list[SDPBackend]:
    """The fused SDPA kernels of the device (also bench/attention_nan.py's)."""
    fused = [SDPBackend.FLASH_ATTENTION]
    if device.type == "cuda":
        fused += [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    return fused


def _attempt(case: dict, backend: SDPBackend, *args) -> list[torch.Tensor] | None:
    """``_run(backend, *args)``, or None after recording the kernel's error in ``case``."""
    try:
        return _run(backend, *args)
    except RuntimeError as err:
        case[backend.name] = {"error": str(err).splitlines()[0][:120]}
        return None


def _draw(generator, device, dtype, *shape):
    return torch.randn(*shape, generator=generator).to(device, dtype)


def mask_cases(device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    for dtype, scale, expand, kind in itertools.product(
            (torch.float32, torch.bfloat16), (1.0, 100.0, 1e4), (False, True),
            ("-inf", "finfo.min", "bool")):
        q = _draw(generator, device, dtype, B, H, L, E) * scale
        k = _draw(generator, device, dtype, B, 1 if expand else H, S, E)
        v, grad = _draw(generator, device, dtype, B, H, S, E), _draw(generator, device, dtype,
                                                                     B, H, L, E)
        mask = _mask(kind, dtype, device)
        reference = _run(SDPBackend.MATH, q, k, v, mask, grad, expand)
        case = {"dtype": str(dtype).split(".")[-1], "query_scale": scale,
                "keys": "expanded" if expand else "per head", "mask": kind,
                "math_nonfinite": [not torch.isfinite(t).all().item() for t in reference]}
        for backend in fused_backends(device):
            result = _attempt(case, backend, q, k, v, mask, grad, expand)
            if result is None:
                continue
            case[backend.name] = {
                "nonfinite": [not torch.isfinite(t).all().item() for t in result],
                "max_diff": max((a.float() - b.float()).abs().max().item()
                                for a, b in zip(result, reference, strict=True)),
            }
        print(json.dumps(case), flush=True)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Norm of a - b over the norm of b, in float64; None where a is not finite."""
    if not torch.isfinite(a).all():
        return None
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-300))


def logit_sweep(device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    for dtype, scale in itertools.product((torch.float32, torch.bfloat16), SWEEP_SCALES):
        q = _draw(generator, device, dtype, B, H, L, E) * scale
        k, v = (_draw(generator, device, dtype, B, H, S, E) for _ in range(2))
        grad = _draw(generator, device, dtype, B, H, L, E)
        logits = q.double() @ k.double().transpose(-1, -2) * E ** -0.5
        reference = _run(SDPBackend.MATH, *(t.double() for t in (q, k, v)), None,
                         grad.double(), False)
        case = {"dtype": str(dtype).split(".")[-1], "query_std": scale,
                "max_abs_logit": float(logits.abs().max())}
        for backend in [SDPBackend.MATH, *fused_backends(device)]:
            result = _attempt(case, backend, q, k, v, None, grad, False)
            if result is None:
                continue
            case[backend.name] = {
                "relative_error": dict(zip(
                    ("out", "dq", "dk", "dv"),
                    (_relative(a, b) for a, b in zip(result, reference, strict=True)),
                    strict=True)),
                "max_abs": [float(t.abs().max()) for t in result],
                "nonfinite": [int((~torch.isfinite(t)).sum()) for t in result],
            }
        case["float64_max_abs"] = [float(t.abs().max()) for t in reference]
        print(json.dumps(case), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sweep", action="store_true", help="the logit-scale sweep instead")
    args = parser.parse_args()
    device = torch.device(args.device)
    (logit_sweep if args.sweep else mask_cases)(device)


if __name__ == "__main__":
    main()
