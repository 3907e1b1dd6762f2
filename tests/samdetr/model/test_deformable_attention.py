"""Multi-scale deformable attention in plain PyTorch against bilinear sampling written out by
hand, the one-grid_sample-per-level form against the stacked form, the official
initialisation, padding and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samdetr.model.deformable_attention import (
    MultiScaleDeformableAttention,
    sample_levels,
    sample_levels_stacked,
)


def bilinear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """One bilinear sample of ``image`` (E, H, W) at normalised (x, y), zero outside, with
    cell centres at ((j + 0.5) / W, (i + 0.5) / H): grid_sample's align_corners=False."""
    _, height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(image.shape[0], dtype=image.dtype)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        if 0 <= xi < width and 0 <= yi < height:
            weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
            out += weight * image[:, yi, xi]
    return out


def by_hand(value, shapes, locations, weights):
    b, _, m, e = value.shape
    q, points = locations.shape[1], locations.shape[4]
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, q, m * e, dtype=value.dtype)
    for bi in range(b):
        for qi in range(q):
            for head in range(m):
                acc = torch.zeros(e, dtype=value.dtype)
                for level, (h, w) in enumerate(shapes):
                    image = value[bi, starts[level]:starts[level + 1], head].T.reshape(e, h, w)
                    for k in range(points):
                        x, y = locations[bi, qi, head, level, k].tolist()
                        acc += weights[bi, qi, head, level, k] * bilinear(image, x, y)
                out[bi, qi, head * e:(head + 1) * e] = acc
    return out


def _case(seed, shapes, b=2, q=3, m=2, e=3, points=2, spread=1.4):
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(b, tokens, m, e, generator=generator, dtype=torch.float64)
    # locations from -0.2 to 1.2: inside, on the border and outside every map
    locations = torch.rand(b, q, m, len(shapes), points, 2, generator=generator,
                           dtype=torch.float64) * spread - (spread - 1) / 2
    weights = torch.rand(b, q, m, len(shapes) * points, generator=generator,
                         dtype=torch.float64).softmax(-1).view(b, q, m, len(shapes), points)
    return value, locations, weights


@pytest.mark.parametrize("sample", [sample_levels, sample_levels_stacked],
                         ids=["per_level", "stacked"])
def test_sampling_equals_bilinear_written_out(sample):
    shapes = [(4, 5), (2, 3), (1, 2)]
    value, locations, weights = _case(0, shapes)
    torch.testing.assert_close(sample(value, shapes, locations, weights),
                               by_hand(value, shapes, locations, weights))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), levels=st.integers(1, 4),
       sides=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=4, max_size=4))
def test_one_grid_sample_per_level_equals_the_stacked_levels(seed, levels, sides):
    shapes = sides[:levels]
    value, locations, weights = _case(seed, shapes, spread=2.0)
    for tensor in (value, locations, weights):
        tensor.requires_grad_(True)
    per_level = sample_levels(value, shapes, locations, weights)
    stacked = sample_levels_stacked(value, shapes, locations, weights)
    torch.testing.assert_close(stacked, per_level)
    upstream = torch.randn_like(per_level)
    grads = [torch.autograd.grad(out, (value, locations, weights), upstream)
             for out in (per_level, stacked)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a)


def test_gradients_are_the_derivatives():
    shapes = [(3, 4), (2, 2)]
    value, locations, weights = _case(1, shapes, b=1, q=2, spread=0.8)
    inputs = tuple(t.requires_grad_(True) for t in (value, locations, weights))
    assert torch.autograd.gradcheck(lambda v, loc, w: sample_levels(v, shapes, loc, w), inputs)


def test_official_initialisation():
    attention = MultiScaleDeformableAttention(d_model=32, num_levels=3, num_heads=8,
                                              num_points=4)
    bias = attention.sampling_offsets.bias.view(8, 3, 4, 2)
    # head 0 points along +x, head 2 along +y, head 1 diagonally (both components 1)
    torch.testing.assert_close(bias[0, 0, :, :], torch.tensor([[1.0, 0], [2, 0], [3, 0], [4, 0]]))
    torch.testing.assert_close(bias[2, 1, 1], torch.tensor([0.0, 2.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[1, 2, 3], torch.tensor([4.0, 4.0]))
    assert torch.equal(bias[:, 0], bias[:, 2])  # the same star on every level
    assert not attention.sampling_offsets.weight.any()
    assert not attention.attention_weights.weight.any()
    assert not attention.attention_weights.bias.any()
    assert not attention.value_proj.bias.any() and not attention.output_proj.bias.any()


def test_padded_tokens_are_not_read_and_forms_agree():
    torch.manual_seed(0)
    shapes = [(6, 8), (3, 4)]
    attention = MultiScaleDeformableAttention(d_model=16, num_levels=2, num_heads=4,
                                              num_points=3)
    with torch.no_grad():
        attention.sampling_offsets.weight.normal_(std=0.5)
        attention.attention_weights.weight.normal_(std=0.5)
    query = torch.randn(1, 5, 16)
    reference = torch.rand(1, 5, 2, 2)
    value = torch.randn(1, 60, 16)
    padding = torch.zeros(1, 60, dtype=torch.bool)
    padding[0, 40:48] = True  # the last row of the first level
    padding[0, 56:60] = True  # the last row of the second
    out = attention(query, reference, value, shapes, padding)
    changed = value.clone()
    changed[padding] = 1e3
    torch.testing.assert_close(attention(query, reference, changed, shapes, padding), out)
    attention.stacked = True
    torch.testing.assert_close(attention(query, reference, value, shapes, padding), out)
    with pytest.raises(ValueError, match="give 60 tokens"):
        attention(query, reference, value[:, :50], shapes, padding[:, :50])
