"""Unit tests of the whole detector: the M knob, SMCA, baseline, gradients, padding, errors."""

from __future__ import annotations

import pytest
import torch
from support.tiny import D, tiny_config
from torch.testing import assert_close

from samdetr.batching import pad_images
from samdetr.builder import build_criterion, build_model
from samdetr.config import DetectorConfig

# ---------------------------------------------------------------------------- detector

TARGETS = [
    {
        "labels": torch.tensor([1, 3]),
        "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.3, 0.2]]),
    },
    {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
]
# Exact-zero gradients that are right, found by inspection:
# * layer 0's self-attention sees tgt == 0 (the decoder starts from zero content), so the
#   weights of its content projections q/k/v multiply zeros and get zero gradient (their
#   biases do get gradient). The same holds in the official code.
ZERO_GRAD_BY_DESIGN = {
    "transformer.decoder.layers.0.self_attn.q_content.weight",
    "transformer.decoder.layers.0.self_attn.k_content.weight",
    "transformer.decoder.layers.0.self_attn.v.weight",
}


def box_head_hidden(name: str) -> bool:
    return name.startswith("transformer.decoder.box_heads.") and ".layers.2." not in name


def train_step(config: DetectorConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(config).train()
    criterion = build_criterion(config)
    out = model([torch.randn(3, 64, 64), torch.randn(3, 48, 64)])
    total = criterion.weighted_total(criterion(out, TARGETS, num_boxes=3.0))
    total.backward()
    assert torch.isfinite(total)
    return model, out


def zero_grads(model) -> set[str]:
    return {
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.any())
    }


def check_gradients(model) -> None:
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    # * the box heads' last layer starts at zero (reset_head_parameters), so their hidden
    #   layers get exactly zero gradient on the very first step; every other tensor gets some.
    assert zero_grads(model) == ZERO_GRAD_BY_DESIGN | {
        n for n, _ in model.named_parameters() if box_head_hidden(n)
    }


def check_gradients_after_box_heads_move(config: DetectorConfig, model) -> None:
    # Once the box heads' last layer is non-zero (after any update), their hidden layers learn.
    with torch.no_grad():
        for head in model.transformer.decoder.box_heads:
            head.layers[-1].weight.normal_(std=1e-2)
    model.zero_grad(set_to_none=True)
    criterion = build_criterion(config)
    out = model([torch.randn(3, 64, 64), torch.randn(3, 48, 64)])
    criterion.weighted_total(criterion(out, TARGETS, num_boxes=3.0)).backward()
    assert zero_grads(model) == ZERO_GRAD_BY_DESIGN


@pytest.mark.parametrize("m", [1, 2, 4, 8, 16])
def test_num_salient_points_is_a_real_knob(m):
    config = tiny_config(num_salient_points=m)
    model, out = train_step(config)
    b, q = 2, config.model.num_queries
    assert out["pred_logits"].shape == (b, q, 5)
    assert out["pred_boxes"].shape == (b, q, 4)
    assert out["salient_points"].shape == (b, q, m, 2)
    assert len(out["aux_outputs"]) == 1
    for layer in model.transformer.decoder.layers:
        assert layer.aligner.num_points == m
        assert layer.aligner.content_gate.out_features == m * D
        assert layer.aligner.point_mlp[-1].out_features == 2 * m
        # The official init xavier-initialises the head's last weight (the bias stays zero).
        assert layer.aligner.point_mlp[-1].weight.any()
    check_gradients(model)
    if m == 4:
        check_gradients_after_box_heads_move(config, model)


@pytest.mark.parametrize("m", [2, 8])
def test_smca_trains(m):
    config = tiny_config(num_salient_points=m, smca=True)
    model, out = train_step(config)
    assert out["salient_points"].shape == (2, 10, m, 2)
    for layer in model.transformer.decoder.layers:
        assert layer.aligner.point_mlp[-1].out_features == 4 * m
        assert layer.smca_beta == config.model.smca_beta
    check_gradients(model)


def test_baseline_decoder_trains():
    config = tiny_config(decoder="baseline")
    model, out = train_step(config)
    assert "salient_points" not in out
    assert out["pred_boxes"].shape == (2, 10, 4)
    names = [n for n, _ in model.named_parameters()]
    assert not any("aligner" in n for n in names)
    check_gradients(model)
    check_gradients_after_box_heads_move(config, model)


def test_every_layer_starts_from_the_same_heads_and_trains_them_apart():
    """The official init: one class head and one box head, cloned into every decoder layer
    (PyTorch's default Linear init for both, not the transformer's Xavier; class bias at the
    focal prior; box heads' last layer zero)."""
    torch.manual_seed(0)
    model = build_model(tiny_config(num_decoder_layers=3))
    heads = [model.class_heads, model.transformer.decoder.box_heads]
    for layers in heads:
        first = layers[0].state_dict()
        for layer in layers[1:]:
            for name, value in layer.state_dict().items():
                assert torch.equal(value, first[name]), name
    assert torch.allclose(model.class_heads[0].bias, torch.tensor(-4.59512))
    bound = 1 / D ** 0.5  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    hidden = model.transformer.decoder.box_heads[0].layers[0].weight
    assert hidden.abs().max() <= bound and hidden.abs().max() > 0.9 * bound
    # separate parameters: an update of one layer's head leaves the others as they were
    params = {id(p) for layers in heads for p in layers.parameters()}
    assert len(params) == sum(1 for layers in heads for _ in layers.parameters())
    with torch.no_grad():
        model.class_heads[1].weight.add_(1.0)
    assert not torch.equal(model.class_heads[0].weight, model.class_heads[1].weight)


def test_without_aux_loss():
    model = build_model(tiny_config(aux_loss=False)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert "aux_outputs" not in out
    assert out["pred_logits"].shape == (1, 10, 5)


@pytest.fixture(scope="module")
def eval_model():
    torch.manual_seed(1)
    model = build_model(tiny_config(smca=True)).eval()
    with torch.no_grad():  # move the box heads off zero so boxes depend on the features
        for head in model.transformer.decoder.box_heads:
            head.layers[-1].weight.normal_(std=0.1)
    return model


def test_list_input_equals_padded_batch(eval_model):
    images = [torch.randn(3, 64, 96), torch.randn(3, 80, 64)]
    with torch.no_grad():
        from_list = eval_model(images)
        from_batch = eval_model(*pad_images(images))
    for key in ("pred_logits", "pred_boxes", "salient_points"):
        assert torch.equal(from_list[key], from_batch[key]), key
    assert from_list["pred_boxes"].shape == (2, 10, 4)


def test_outputs_are_normalised_to_the_unpadded_image(eval_model):
    image = torch.randn(3, 64, 64)
    with torch.no_grad():
        out = eval_model([image, torch.randn(3, 96, 128)])  # the first image is padded a lot
    boxes, points = out["pred_boxes"], out["salient_points"]
    assert bool(((boxes >= 0) & (boxes <= 1)).all())
    # The last layer's salient points lie inside its reference box: the previous layer's box.
    ref = out["aux_outputs"][-1]["pred_boxes"][:, :, None, :]
    assert points.shape == (2, 10, 4, 2)
    assert bool((points >= ref[..., :2] - ref[..., 2:] / 2 - 1e-6).all())
    assert bool((points <= ref[..., :2] + ref[..., 2:] / 2 + 1e-6).all())


def test_transformer_ignores_padding_exactly(eval_model):
    """Encoder + decoder on a padded memory give the unpadded results at the valid cells.

    Padded cells hold garbage; they must be excluded from attention, the position encoding
    must not see them and the aligner must use the valid ratio. Reference boxes are kept
    inside the image so RoIAlign never interpolates across the valid border.
    """
    model = eval_model
    d, height, width = D, 8, 10
    torch.manual_seed(3)
    src = torch.randn(1, d, height, width)
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    big = torch.randn(1, d, height + 4, width + 5) * 50  # garbage in the padding
    big[..., :height, :width] = src
    big_mask = torch.ones(1, height + 4, width + 5, dtype=torch.bool)
    big_mask[:, :height, :width] = False
    ref = torch.empty(10, 4)
    ref[:, :2] = torch.rand(10, 2) * 0.2 + 0.4
    ref[:, 2:] = torch.rand(10, 2) * 0.15 + 0.1
    table = torch.log(ref / (1 - ref))
    with torch.no_grad():
        small = model.transformer(src, mask, model.position_encoding(mask), table)
        padded = model.transformer(big, big_mask, model.position_encoding(big_mask), table)
    hidden, boxes, points = small
    hidden_p, boxes_p, points_p = padded
    assert_close(hidden_p, hidden, atol=1e-4, rtol=1e-4)
    assert_close(boxes_p, boxes, atol=1e-5, rtol=1e-5)
    for pts, pts_p in zip(points, points_p, strict=True):
        assert_close(pts_p, pts, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("mask", "fragment"),
    [
        (torch.zeros(2, 64, 63, dtype=torch.bool), "mask must be bool"),
        (torch.zeros(1, 64, 64, dtype=torch.bool), "mask must be bool"),
        (torch.zeros(2, 64, 64, dtype=torch.float32), "mask must be bool"),
        (torch.zeros(2, 64, 64, dtype=torch.uint8), "mask must be bool"),
    ],
)
def test_bad_mask_raises(eval_model, mask, fragment):
    with pytest.raises(ValueError, match=fragment):
        eval_model(torch.randn(2, 3, 64, 64), mask)


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 1, 64, 64), (2, 4, 64, 64), (1, 2, 3, 64, 64)])
def test_bad_images_raise(eval_model, shape):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        eval_model(torch.randn(*shape))


def test_list_with_mask_raises(eval_model):
    with pytest.raises(ValueError, match="either a list"):
        eval_model([torch.randn(3, 64, 64)], torch.zeros(1, 64, 64, dtype=torch.bool))


def test_attention_runs_on_the_plain_kernel_only():
    """Fused SDPA kernels returned NaN gradients with padding masks (CPU flash; CUDA
    memory-efficient and cuDNN), so the detector allows only the math kernel."""
    model = build_model(tiny_config()).eval()
    seen = []

    def record(module, args):
        backends = torch.backends.cuda
        seen.append((backends.math_sdp_enabled(), backends.flash_sdp_enabled(),
                     backends.mem_efficient_sdp_enabled(), backends.cudnn_sdp_enabled()))

    model.transformer.encoder.layers[0].self_attn.register_forward_pre_hook(record)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen == [(True, False, False, False)]
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the forward


def test_attention_kernel_auto_leaves_the_choice_to_torch():
    """model.attention_kernel=auto: every SDPA backend stays enabled; same outputs as math."""
    torch.manual_seed(0)
    config = tiny_config(attention_kernel="auto")
    model = build_model(config).eval()
    seen = []

    def record(module, args):
        backends = torch.backends.cuda
        seen.append((backends.math_sdp_enabled(), backends.flash_sdp_enabled(),
                     backends.mem_efficient_sdp_enabled()))

    model.transformer.encoder.layers[0].self_attn.register_forward_pre_hook(record)
    images, mask = pad_images([torch.randn(3, 64, 80), torch.randn(3, 48, 64)])
    with torch.no_grad():
        auto = model(images, mask)
        model.attention_kernel = "math"
        math = model(images, mask)
    assert seen[0] == (True, True, True)
    assert_close(auto["pred_logits"], math["pred_logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention_kernel must be one of"):
        tiny_config(attention_kernel="flash")


def test_math_kernel_keeps_gradients_finite_where_the_encoder_logits_are_huge():
    """The default kernel's backward stays finite with encoder logits ~1e9 (a backbone whose
    features grew unnormalised), the regime where the fused kernels' backward, which recomputes
    the softmax from the saved log-sum-exp, returns non-finite gradients (docs/performance.md,
    "Attention kernel"; bench/attention_kernels.py --sweep). With attention_kernel=auto this
    same step gives non-finite gradients on the CPU (torch 2.14.1): the 320 keys of these
    images span several of the flash kernel's blocks."""
    torch.manual_seed(0)
    config = tiny_config()
    assert config.model.attention_kernel == "math"
    model = build_model(config).train()
    with torch.no_grad():
        for p in model.input_proj.parameters():
            p.mul_(1e5)  # q and k scale with it: logits by about 1e10
    largest = []

    def record(module, args, kwargs, output):
        d = module.embed_dim
        q = torch.nn.functional.linear(args[0], module.in_proj_weight[:d], module.in_proj_bias[:d])
        k = torch.nn.functional.linear(args[1], module.in_proj_weight[d:2 * d],
                                       module.in_proj_bias[d:2 * d])
        per_head = d // module.num_heads
        logits = torch.einsum("bqhe,bkhe->bhqk", q.unflatten(-1, (module.num_heads, -1)),
                              k.unflatten(-1, (module.num_heads, -1))) / per_head ** 0.5
        largest.append(float(logits.detach().abs().max()))

    model.transformer.encoder.layers[0].self_attn.register_forward_hook(record, with_kwargs=True)
    images, mask = pad_images([torch.randn(3, 512, 640), torch.randn(3, 384, 512)])
    outputs = model(images, mask)
    criterion = build_criterion(config)
    criterion.weighted_total(criterion(outputs, TARGETS, num_boxes=3.0)).backward()
    assert largest[0] > 1e8
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "transformer.encoder.layers.0.self_attn.in_proj_weight" in grads
    assert all(torch.isfinite(g).all() for g in grads.values())
