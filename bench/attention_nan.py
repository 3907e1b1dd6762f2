"""Train with PyTorch's fused attention kernels until a gradient goes non-finite, and replay it.

    python -m bench.attention_nan [--device cuda] [--amp bf16|none] [--steps 400]
        [--kernel auto|math] [--lr 1e-3] [--norm frozen_bn|group_norm] [--trainable-layers 3]
        [--last-stage 4] [--shards DIR] [--dump FILE] [--out FILE]

The setting of ``bench/gpu_check.py``'s train_bf16 part, where the fused kernels' backward gave
NaN gradients on an H100 (docs/performance.md, "Attention kernel"): the small model (ResNet-18,
width 64, 2 + 2 layers), lr 1e-3, batch 8, 128-px synthetic shapes (made under --shards when
missing); the backbone flags change it, e.g. to the demo's normalised, frozen ResNet-18 cut
after layer2 (``--norm group_norm --trainable-layers 0 --last-stage 2``). Each step records,
for every encoder layer, the largest attention logit magnitude (|q . k| / sqrt(E) over
unpadded keys), the loss and the gradient norm. At the first step with a
non-finite gradient it stops and, for every encoder layer, saves the attention module's weights,
its inputs and the gradient that reached its output to --dump, then replays that one attention
forward + backward on the math kernel and on every fused kernel of the device and records which
of them give non-finite gradients. So the logit magnitude at the failure says whether
``python -m bench.attention_kernels --sweep``'s large-logit failure explains it, and the dump
reproduces it without the training run.

One JSON line per --log-every steps to stderr; the summary JSON to stdout and --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.attention_kernels import fused_backends
from bench.gpu_check import DEMO_OPTIM, SMALL, make_shards, small_setup
from samdetr.data.loader import set_epoch
from samdetr.engine.reproducibility import seed_everything
from samdetr.engine.step import autocast_context
from samdetr.model.criterion import num_boxes_for


class AttentionRecorder:
    """Forward hooks on each encoder ``nn.MultiheadAttention``: the step's largest logit and the
    last call's inputs and output gradient (for the dump)."""

    def __init__(self, modules: list[nn.MultiheadAttention]):
        self.modules = modules
        self.max_logit = [0.0] * len(modules)
        self.last: list[dict] = [{} for _ in modules]
        for index, module in enumerate(modules):
            module.register_forward_hook(self._hook(index), with_kwargs=True)

    def reset(self) -> None:
        self.max_logit = [0.0] * len(self.modules)

    def _hook(self, index: int):
        def hook(module, args, kwargs, output):
            query, key, value = args[:3] if len(args) >= 3 else (args[0], args[1],
                                                                 kwargs["value"])
            padding = kwargs.get("key_padding_mask")
            self.max_logit[index] = max(self.max_logit[index],
                                        _max_logit(module, query, key, padding))
            self.last[index] = {"query": query.detach(), "key": key.detach(),
                                "value": value.detach(), "key_padding_mask": padding}
            if output[0].requires_grad:
                output[0].register_hook(
                    lambda grad: self.last[index].__setitem__("grad_out", grad.detach()))
        return hook


@torch.no_grad()
def _max_logit(module: nn.MultiheadAttention, query, key, padding) -> float:
    d, h = module.embed_dim, module.num_heads
    w, b = module.in_proj_weight.float(), module.in_proj_bias.float()
    q = F.linear(query.float(), w[:d], b[:d]).unflatten(-1, (h, -1)).transpose(1, 2)
    k = F.linear(key.float(), w[d:2 * d], b[d:2 * d]).unflatten(-1, (h, -1)).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)).abs() / math.sqrt(d // h)
    if padding is not None:
        logits = logits.masked_fill(padding[:, None, None, :], 0.0)
    return float(logits.max())


def replay(module: nn.MultiheadAttention, record: dict, device: torch.device, amp) -> dict:
    """One forward + backward of ``module`` on the recorded inputs per SDPA kernel: the count of
    non-finite values in the output and in the input gradients."""
    result = {}
    for backend in [SDPBackend.MATH, *fused_backends(device)]:
        query, key, value = (record[n].clone().requires_grad_(True)
                             for n in ("query", "key", "value"))
        try:
            with sdpa_kernel([backend]), autocast_context(device, amp):
                out = module(query, key, value, key_padding_mask=record["key_padding_mask"],
                             need_weights=False)[0]
            out.backward(record["grad_out"].to(out.dtype))
        except RuntimeError as err:
            result[backend.name] = {"error": str(err).splitlines()[0][:120]}
            continue
        result[backend.name] = {name: int((~torch.isfinite(t)).sum()) for name, t in
                                (("out", out), ("d_query", query.grad), ("d_key", key.grad),
                                 ("d_value", value.grad))}
    return result


def setup(args, device):
    """gpu_check.py's small setup with this script's backbone, kernel and lr."""
    if not (args.shards / "train").is_dir():
        make_shards(args.shards)
    backbone = {**SMALL["backbone"], "norm": args.norm, "trainable_layers": args.trainable_layers,
                "last_stage": args.last_stage}
    return small_setup(args, {"batch": args.batch, "workers": 0}, device,
                       model_overrides={"backbone": backbone, "attention_kernel": args.kernel},
                       optim_overrides={"lr": args.lr, "lr_backbone": args.lr})


def batches(loader):
    epoch = 0
    while True:
        set_epoch(loader, epoch)
        yield from loader
        epoch += 1


def train(args, device, amp) -> dict:
    seed_everything(args.seed)
    model, criterion, optimizer, loader = setup(args, device)
    layers = [layer.self_attn for layer in model.transformer.encoder.layers]
    recorder = AttentionRecorder(layers)
    history, start = [], time.perf_counter()
    for step, (images, mask, targets) in enumerate(
            islice(batches(loader), args.steps), start=1):
        recorder.reset()
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with autocast_context(device, amp):
            outputs = model(images.to(device), mask.to(device))
        losses = criterion(outputs, targets, num_boxes_for(targets, device))
        loss = criterion.weighted_total(losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bad = [n for n, p in model.named_parameters()
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1))
        row = {"step": step, "loss": round(loss.item(), 4), "grad_norm": grad_norm,
               "encoder_max_logit": [round(x, 2) for x in recorder.max_logit]}
        history.append(row)
        if step % args.log_every == 0 or bad:
            print(json.dumps(row), file=sys.stderr, flush=True)
        if bad:
            torch.save({"layers": [m.state_dict() for m in layers], "records": recorder.last,
                        "amp": str(amp), "step": step}, args.dump)
            return {"first_nonfinite_step": step, "nonfinite_parameters": bad[:20],
                    "at_failure": row, "dump": str(args.dump),
                    "replay": [replay(m, r, device, amp)
                               for m, r in zip(layers, recorder.last, strict=True)],
                    "seconds": round(time.perf_counter() - start, 1),
                    "largest_logit_before": max(max(r["encoder_max_logit"])
                                                for r in history[:-1]) if step > 1 else None}
        optimizer.step()
    return {"first_nonfinite_step": None, "steps": args.steps,
            "largest_logit": max(max(r["encoder_max_logit"]) for r in history),
            "last": history[-1], "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=("bf16", "none"), default="bf16")
    parser.add_argument("--kernel", choices=("auto", "math"), default="auto")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=DEMO_OPTIM["lr"], help="of every parameter")
    parser.add_argument("--norm", default="frozen_bn", help="backbone.norm")
    parser.add_argument("--trainable-layers", type=int, default=3,
                        help="backbone.trainable_layers")
    parser.add_argument("--last-stage", type=int, default=4, help="backbone.last_stage")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--shards", type=Path,
                        default=Path(tempfile.gettempdir()) / "samdetr_attention_nan")
    parser.add_argument("--dump", type=Path, default=Path("attention_nan_dump.pt"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    summary = {"device": str(device), "torch": torch.__version__, "amp": args.amp,
               "kernel": args.kernel, **train(args, device, amp)}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
