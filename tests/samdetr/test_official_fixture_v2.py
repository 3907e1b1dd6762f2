"""The official code's numbers from ``../shared/fixtures/official-tiny-v2``, reproduced.

Every tensor of that fixture is perturbed away from the official initialisation (so swapped or
dropped LayerNorms, biases or per-layer heads change the numbers), the encoder's attention is
not saturated (so the gradients of ``input_proj`` and the backbone are well conditioned and
checked in float32 like the rest) and the decoder has 6 layers, which the multiscale variants
(``ms``, ``ms_smca``: C3-C5, deformable encoder) spread over the three levels. The weights go
through this project's official-checkpoint loader, as a user's checkpoint would. Tolerances
are the fixture README's: outputs and losses ~1e-5 relative, gradients ~1e-4 relative.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from samdetr.batching import pad_images
from samdetr.builder import build_criterion
from samdetr.model.postprocess import PostProcess
from samdetr.official import convert_state_dict
from samdetr.official_fixture import (
    grad_keys,
    inputs,
    load_as_official_checkpoint,
    multiscale_grad_keys,
    official_args,
    official_state_dict_v2,
    reference,
)

VARIANTS = ["base", "smca", "ms", "ms_smca"]
LAYERS = 6


@pytest.fixture(scope="module", params=VARIANTS)
def converted(request, official_tiny_v2_dir, tmp_path_factory):
    """(variant, model, config) loaded from an official-format checkpoint file."""
    variant = request.param
    fixture = official_tiny_v2_dir
    model, config = load_as_official_checkpoint(
        official_state_dict_v2(fixture, variant), official_args(fixture, variant),
        tmp_path_factory.mktemp("official_v2") / f"{variant}.pth")
    return variant, model, config


def _forward(model, fixture_dir):
    data = inputs(fixture_dir)
    images, mask = pad_images(list(data["images"]))
    return model(images, mask), data


def test_inferred_variant(converted):
    variant, _, config = converted
    m = config.model
    assert (m.smca, m.multiscale, m.num_classes) == ("smca" in variant, "ms" in variant, 91)
    assert (m.num_queries, m.num_encoder_layers, m.num_decoder_layers) == (30, 1, LAYERS)
    assert (m.num_salient_points, m.dim_feedforward, m.backbone.name) == (8, 256, "resnet50")
    if m.multiscale:  # C3-C5, 4 points, the encoder's FFN halved, decoder coarse to fine
        assert (m.num_feature_levels, m.encoder_points, m.encoder_ffn) == (3, 4, 128)
        assert m.layer_levels == (2, 2, 1, 1, 0, 0)
    else:
        assert not m.input_proj_groupnorm and m.encoder_ffn == 256


def test_outputs_of_every_layer(converted, official_tiny_v2_dir):
    variant, model, _ = converted
    ref = reference(official_tiny_v2_dir, variant)
    with torch.no_grad():
        out, _ = _forward(model, official_tiny_v2_dir)
    assert_close(out["pred_logits"], ref["pred_logits"], rtol=1e-5, atol=1e-5)
    assert_close(out["pred_boxes"], ref["pred_boxes"], rtol=1e-5, atol=1e-6)
    assert len(out["aux_outputs"]) == len(ref["aux_pred_logits"]) == LAYERS - 1
    for layer, (aux, logits, boxes) in enumerate(zip(
        out["aux_outputs"], ref["aux_pred_logits"], ref["aux_pred_boxes"], strict=True
    )):
        assert_close(aux["pred_logits"], logits, rtol=1e-5, atol=1e-5,
                     msg=lambda m, i=layer: f"layer {i} logits: {m}")
        assert_close(aux["pred_boxes"], boxes, rtol=1e-5, atol=1e-6,
                     msg=lambda m, i=layer: f"layer {i} boxes: {m}")


def test_postprocessed_detections(converted, official_tiny_v2_dir):
    variant, model, _ = converted
    ref = reference(official_tiny_v2_dir, variant)
    with torch.no_grad():
        out, data = _forward(model, official_tiny_v2_dir)
    results = PostProcess(num_top=100)(out, data["orig_sizes"])
    for ours, theirs in zip(results, ref["postprocess_top100"], strict=True):
        assert torch.equal(ours["labels"], theirs["labels"])
        assert_close(ours["scores"], theirs["scores"], rtol=1e-5, atol=1e-6)
        assert_close(ours["boxes"], theirs["boxes"], rtol=1e-5, atol=3e-4)


@pytest.fixture(scope="module")
def backward(converted, official_tiny_v2_dir):
    """Losses, weighted total and parameters (with gradients) of one float32 backward pass."""
    variant, model, config = converted
    model.zero_grad(set_to_none=True)
    out, data = _forward(model, official_tiny_v2_dir)
    targets = [{"labels": t["labels"], "boxes": t["boxes"]} for t in data["targets"]]
    criterion = build_criterion(config)
    num_boxes = float(sum(len(t["labels"]) for t in targets))
    losses = criterion(out, targets, num_boxes=num_boxes)
    total = criterion.weighted_total(losses)
    total.backward()
    return variant, losses, total, dict(model.named_parameters())


def test_losses_of_every_layer(backward, official_tiny_v2_dir):
    variant, losses, total, _ = backward
    ref = reference(official_tiny_v2_dir, variant)
    keys = [f"{term}{suffix}" for term in ("loss_ce", "loss_bbox", "loss_giou")
            for suffix in ["", *(f"_{i}" for i in range(LAYERS - 1))]]
    for key in keys:
        assert losses[key].item() == pytest.approx(ref["losses"][key], rel=1e-5), key
    assert total.item() == pytest.approx(ref["weighted_total_loss"], rel=1e-5)


def test_gradients_in_float32(backward, official_tiny_v2_dir):
    variant, _, _, params = backward
    ref = reference(official_tiny_v2_dir, variant)
    keys = grad_keys(official_tiny_v2_dir)
    if variant.startswith("ms"):  # the projections of C4 and C3, the level embedding, the
        # deformable encoder's offsets and attention weights, a layer2 convolution
        keys = keys + multiscale_grad_keys(official_tiny_v2_dir)
    ours_by_official = dict(zip(keys, convert_state_dict(dict.fromkeys(keys)), strict=True))
    for official_name in keys:
        expected = ref["grads"][official_name]
        grad = params[ours_by_official[official_name]].grad
        values = grad.flatten()[expected["index"]]
        scale = expected["values"].abs().max().item()
        assert_close(values, expected["values"], rtol=1e-4, atol=1e-4 * scale,
                     msg=lambda m, n=official_name: f"{n}: {m}")
        assert grad.norm().item() == pytest.approx(expected["norm"], rel=1e-4), official_name
        assert grad.sum().item() == pytest.approx(expected["sum"], rel=1e-3,
                                                  abs=1e-4 * expected["norm"]), official_name
