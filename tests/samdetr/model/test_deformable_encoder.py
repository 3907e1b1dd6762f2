"""The multiscale (deformable) encoder: reference points, valid ratios, padding, one layer."""

from __future__ import annotations

import torch

from samdetr.model.deformable_attention import MultiScaleDeformableAttention
from samdetr.model.deformable_encoder import (
    DeformableEncoder,
    DeformableEncoderLayer,
    reference_points,
    valid_ratios_of,
)

SHAPES = [(6, 8), (3, 4)]
D = 16


def _masks(valid):
    """Per level (B, H, W) masks of images whose unpadded size is ``valid`` (h, w) at level 0."""
    masks = []
    for level, (h, w) in enumerate(SHAPES):
        mask = torch.ones(len(valid), h, w, dtype=torch.bool)
        for i, (vh, vw) in enumerate(valid):
            mask[i, : -(-vh // 2**level), : -(-vw // 2**level)] = False
        masks.append(mask)
    return masks


def test_reference_points_are_cell_centres_of_the_unpadded_part():
    masks = _masks([(6, 8), (4, 6)])
    ratios = valid_ratios_of(masks)
    torch.testing.assert_close(ratios[1], torch.tensor([[6 / 8, 4 / 6], [3 / 4, 2 / 3]]))
    points = reference_points(SHAPES, ratios)
    assert points.shape == (2, 6 * 8 + 3 * 4, 2, 2)
    # an unpadded image: its cell (row 1, column 2) of level 0 is ((2.5) / 8, (1.5) / 6) everywhere
    torch.testing.assert_close(points[0, 1 * 8 + 2], torch.tensor([[2.5 / 8, 1.5 / 6]] * 2))
    # the padded one: a fraction of the unpadded part of its own level, the same fraction of
    # the unpadded part of each level
    fraction = torch.tensor([2.5 / 6, 1.5 / 4])
    expected = fraction * ratios[1]
    torch.testing.assert_close(points[1, 1 * 8 + 2], expected)
    # level 1's first cell, read on level 0
    first = torch.tensor([0.5 / 3, 0.5 / 2]) * ratios[1, 0]
    torch.testing.assert_close(points[1, 48, 0], first)


def test_padded_tokens_change_nothing_the_image_covers():
    torch.manual_seed(0)
    layer = DeformableEncoderLayer(MultiScaleDeformableAttention(D, 2, 4, 2), D, 32, 0.0)
    with torch.no_grad():
        layer.self_attn.sampling_offsets.weight.normal_(std=0.3)
        layer.self_attn.attention_weights.weight.normal_(std=0.3)
    encoder = DeformableEncoder(layer, 2).eval()
    masks = _masks([(6, 8), (4, 6)])
    padding = torch.cat([m.flatten(1) for m in masks], dim=1)
    src, pos = torch.randn(2, 60, D), torch.randn(2, 60, D)
    out = encoder(src, pos, SHAPES, padding, valid_ratios_of(masks))
    noisy = src.masked_fill(padding[..., None], 50.0)
    again = encoder(noisy, pos, SHAPES, padding, valid_ratios_of(masks))
    torch.testing.assert_close(again[~padding], out[~padding])
    assert out.shape == (2, 60, D) and torch.isfinite(out).all()


def test_one_layer_is_attention_then_ffn_post_norm():
    torch.manual_seed(1)
    attention = MultiScaleDeformableAttention(D, 2, 4, 2)
    layer = DeformableEncoderLayer(attention, D, 32, 0.0).eval()
    src, pos = torch.randn(1, 60, D), torch.randn(1, 60, D)
    padding = torch.zeros(1, 60, dtype=torch.bool)
    reference = reference_points(SHAPES, torch.ones(1, 2, 2))
    x = layer.norm1(src + attention(src + pos, reference, src, SHAPES, padding))
    expected = layer.norm2(x + layer.linear2(torch.relu(layer.linear1(x))))
    torch.testing.assert_close(layer(src, pos, reference, SHAPES, padding), expected)
