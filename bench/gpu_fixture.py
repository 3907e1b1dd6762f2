"""The official-tiny fixture part of bench/gpu_check.py: the official code's numbers on a device.

Read with samdetr/official_fixture.py (the suite's reader of the fixture) and judged with the
tolerances of tests/samdetr/test_official_fixture.py (the same rules, so a GPU verdict means what a
CPU
test means).
fixture_part(args, cfg, device, bf16) is the part: float32 with TF32 off, with verdicts, or bf16
autocast, diffs for information. Imported by gpu_check.py from the script's own folder.
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path

import torch

from samdetr import official_fixture
from samdetr.batching import pad_images
from samdetr.builder import build_criterion
from samdetr.engine.step import autocast_context
from samdetr.model.postprocess import PostProcess
from samdetr.official import convert_state_dict, model_from_official_state

LOSS_KEYS = ("loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0")
ILL_CONDITIONED = ("input_proj.", "backbone.")  # see tests/samdetr/test_official_fixture.py


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """TF32 for CUDA matmuls and convolutions on/off inside (None: as it is); restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def max_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.detach().double().cpu() - ref.double()).abs().max())


def close(ours: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> bool:
    return bool(torch.allclose(ours.detach().float().cpu(), ref.float(), rtol=rtol, atol=atol))


def load_fixture(folder: Path, variant: str, device: torch.device):
    """(eval-mode model, config, inputs, reference, grad keys) of ``variant``."""
    model, config = model_from_official_state(
        official_fixture.official_state_dict(folder, variant),
        official_fixture.official_args(folder, variant),
    )
    return (model.eval().to(device), config, official_fixture.inputs(folder),
            official_fixture.reference(folder, variant), official_fixture.grad_keys(folder))


def fixture_pass(model, config, data, device, dtype=torch.float32, autocast=None):
    """Forward, criterion (outside autocast, as in train_one_epoch) and backward."""
    model.to(dtype).zero_grad(set_to_none=True)
    images, mask = pad_images([img.to(dtype) for img in data["images"]])
    targets = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device, dtype)}
               for t in data["targets"]]
    with autocast_context(device, autocast):
        outputs = model(images.to(device), mask.to(device))
    criterion = build_criterion(config).to(device)
    losses = criterion(outputs, targets, num_boxes=float(sum(len(t["labels"]) for t in targets)))
    losses["weighted_total"] = criterion.weighted_total(losses)
    losses["weighted_total"].backward()
    return outputs, losses


def compare(outputs, losses, ref, data, device) -> dict:
    """Diffs of outputs, top-100 detections and losses vs the reference, with verdicts."""
    pairs = [("pred_logits", outputs["pred_logits"], ref["pred_logits"], 5e-5),
             ("pred_boxes", outputs["pred_boxes"], ref["pred_boxes"], 1e-5)]
    for i, aux in enumerate(outputs["aux_outputs"]):
        pairs += [(f"aux{i}_pred_logits", aux["pred_logits"], ref["aux_pred_logits"][i], 5e-5),
                  (f"aux{i}_pred_boxes", aux["pred_boxes"], ref["aux_pred_boxes"][i], 1e-5)]
    found = {k: outputs[k].detach().float() for k in ("pred_logits", "pred_boxes")}
    top = list(zip(PostProcess(100)(found, data["orig_sizes"].to(device)),
                   ref["postprocess_top100"], strict=True))
    expected = {**ref["losses"], "weighted_total": ref["weighted_total_loss"]}
    rel = {k: abs(losses[k].item() - expected[k]) / abs(expected[k])
           for k in (*LOSS_KEYS, "weighted_total")}
    return {
        "output_max_abs_diff": {name: max_diff(a, b) for name, a, b, _ in pairs},
        "outputs_ok": all(close(a, b, 1e-5, atol) for _, a, b, atol in pairs),
        "top100_same_label_frac": statistics.mean(
            float((o["labels"].cpu() == r["labels"]).float().mean()) for o, r in top),
        "top100_ok": all(torch.equal(o["labels"].cpu(), r["labels"])
                         and close(o["scores"], r["scores"], 1e-5, 1e-6)
                         and close(o["boxes"], r["boxes"], 1e-5, 3e-4) for o, r in top),
        "loss_rel_diff": rel, "losses_ok": max(rel.values()) <= 1e-5,
    }


def compare_grads(model, ref, keys, ill: bool, rtol: float | None) -> dict:
    """Sampled gradients of the well- or ill-conditioned tensors vs the official ones, with the
    verdict of test_gradients where ``rtol`` is given: the sampled values within rtol and an
    absolute rtol * scale (scale = max |expected value|), the gradient norm within rtol. A
    failing tensor also reports its scale: for a tensor whose gradients are all tiny, that
    absolute tolerance is tiny too, and the reader should see it."""
    ours = dict(zip(keys, convert_state_dict(dict.fromkeys(keys)), strict=True))
    params, out = dict(model.named_parameters()), {}
    for name in (k for k in keys if k.startswith(ILL_CONDITIONED) == ill):
        expected, grad = ref["grads"][name], params[ours[name]].grad.float()
        values, scale = grad.flatten()[expected["index"]], expected["values"].abs().max().item()
        norm_rel = abs(grad.norm().item() - expected["norm"]) / abs(expected["norm"])
        out[name] = {"max_abs_diff": max_diff(values, expected["values"]),
                     "norm_rel_diff": norm_rel}
        if rtol is not None:
            ok = close(values, expected["values"], rtol, rtol * scale) and norm_rel <= rtol
            out[name]["ok"] = ok
            if not ok:  # not loosened here: the CPU tests' rule, the magnitude for the reader
                out[name]["scale"] = scale
    return out


def fixture_part(args, cfg, device, bf16: bool) -> dict:
    """float32 (TF32 off): verdicts as in the CPU tests. bf16 autocast: diffs only (no verdict
    against float32 numbers); the losses must be float32 and finite, the gradients finite."""
    result: dict = {"tf32": "off (matmul and cudnn)" if not bf16 else "PyTorch's defaults"}
    with tf32(None if bf16 else False):
        for variant in cfg["variants"]:
            model, config, data, ref, keys = load_fixture(args.fixtures, variant, device)
            outputs, losses = fixture_pass(model, config, data, device,
                                           autocast=torch.bfloat16 if bf16 else None)
            v = result[variant] = compare(outputs, losses, ref, data, device)
            if bf16:
                v["loss_dtypes"] = sorted({str(t.dtype) for t in losses.values()})
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                v["ok"] = v["loss_dtypes"] == ["torch.float32"] and all(
                    bool(torch.isfinite(t).all()) for t in (*losses.values(), *grads))
                v.update(outputs_ok=None, top100_ok=None, losses_ok=None)
                continue
            v["grads_f32"] = compare_grads(model, ref, keys, ill=False, rtol=1e-4)
            v["grads_f32_ill_conditioned_info"] = compare_grads(model, ref, keys, True, None)
            fixture_pass(model, config, data, device, torch.float64)
            v["grads_f64_ill_conditioned"] = compare_grads(model, ref, keys, True, rtol=3e-2)
            v["grads_ok"] = all(g["ok"] for g in (*v["grads_f32"].values(),
                                                  *v["grads_f64_ill_conditioned"].values()))
            v["ok"] = v["outputs_ok"] and v["top100_ok"] and v["losses_ok"] and v["grads_ok"]
    result["ok"] = all(result[v]["ok"] for v in cfg["variants"])
    result["summary"] = " ".join(
        f"{v}: logits {result[v]['output_max_abs_diff']['pred_logits']:.1e}, losses "
        f"{max(result[v]['loss_rel_diff'].values()):.1e} rel, "
        f"{result[v].get('loss_dtypes') or ('grads ok' if result[v]['grads_ok'] else 'FAIL')};"
        for v in cfg["variants"])
    return result
