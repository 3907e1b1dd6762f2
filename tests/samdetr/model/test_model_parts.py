"""Unit tests of the detector's parts: aligner, SMCA bias, encodings, sine encodings."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tiny import D
from torch.testing import assert_close

from samdetr.model.attention import smca_gaussian_bias
from samdetr.model.position_encoding import PositionEmbeddingSine, sine_embed_points
from samdetr.model.semantic_aligner import SemanticAligner

# ---------------------------------------------------------------------------- SemanticAligner


def linear_memory(b: int, d: int, height: int, width: int) -> torch.Tensor:
    """(B, D, H, W) float64: channel 0 = x + 0.5 and channel 1 = y + 0.5 of each cell (its
    centre in cell units), channel 2 = 3, the rest random (irrelevant to the checks)."""
    memory = torch.randn(b, d, height, width, dtype=torch.float64)
    memory[:, 0] = torch.arange(width, dtype=torch.float64) + 0.5
    memory[:, 1] = (torch.arange(height, dtype=torch.float64) + 0.5)[:, None]
    memory[:, 2] = 3.0
    return memory


def open_content_gate(aligner: SemanticAligner) -> None:
    """Make sigmoid(content_gate(tgt)) == 1 exactly so the raw sampled features come out."""
    with torch.no_grad():
        aligner.content_gate.weight.zero_()
        aligner.content_gate.bias.fill_(100.0)


@pytest.mark.parametrize("m", [1, 2, 4, 8])
@pytest.mark.parametrize("predict_scales", [False, True])
def test_aligner_output_shapes(m, predict_scales):
    b, q = 2, 5
    aligner = SemanticAligner(D, m, predict_scales=predict_scales)
    assert aligner.point_mlp[-1].out_features == (4 if predict_scales else 2) * m
    ref = torch.tensor([0.5, 0.5, 0.4, 0.3]).repeat(b, q, 1)
    out = aligner(torch.randn(b, q, D), torch.randn(b, D, 6, 7), ref, torch.ones(b, 2))
    assert out["content"].shape == (b, q, m, D)
    assert out["pos"].shape == (b, q, m, D)
    assert out["points"].shape == (b, q, m, 2)
    if predict_scales:
        assert out["scales"].shape == (b, q, m, 2)
    else:
        assert out["scales"] is None


def test_aligner_zero_offsets_sample_the_box_centre():
    b, q, m, height, width = 2, 4, 4, 12, 16
    aligner = SemanticAligner(D, m, predict_scales=False).double()
    open_content_gate(aligner)
    # The head's last layer starts at zero: every offset is tanh(0) = 0.
    assert not aligner.point_mlp[-1].weight.any() and not aligner.point_mlp[-1].bias.any()
    ref = torch.tensor(
        [[0.5, 0.5, 0.3, 0.4], [0.3, 0.6, 0.2, 0.2], [0.7, 0.35, 0.2, 0.3], [0.42, 0.58, 0.5, 0.4]],
        dtype=torch.float64,
    ).repeat(b, 1, 1)
    valid_ratio = torch.tensor([[1.0, 1.0], [0.75, 0.5]], dtype=torch.float64)
    memory = linear_memory(b, D, height, width)
    out = aligner(torch.randn(b, q, D, dtype=torch.float64), memory, ref, valid_ratio)
    # Points are the reference centres (exactly: centre + 0.5 * wh * 0).
    assert torch.equal(out["points"], ref[:, :, None, :2].expand(b, q, m, 2))
    # The content is the memory at the centre, in cells of the *unpadded* part of the map.
    size = torch.tensor([width, height], dtype=torch.float64) * valid_ratio[:, None, :]
    centre_cells = ref[..., :2] * size  # (B, Q, 2)
    content = out["content"]
    assert_close(content[..., 0], centre_cells[..., None, 0].expand(b, q, m), atol=1e-9, rtol=0)
    assert_close(content[..., 1], centre_cells[..., None, 1].expand(b, q, m), atol=1e-9, rtol=0)
    assert_close(content[..., 2], torch.full((b, q, m), 3.0, dtype=torch.float64))


@settings(max_examples=10, deadline=None)
@given(
    st.lists(st.floats(-1.2, 1.2), min_size=8, max_size=8),
    st.lists(st.floats(-3.0, 3.0), min_size=8, max_size=8),
    st.floats(0.5, 1.0),
    st.floats(0.5, 1.0),
)
def test_aligner_points_follow_the_offsets(bias_xy, bias_scales, ratio_w, ratio_h):
    # |tanh(1.2)| < 6/7 keeps every point between the RoI's outer bin centres, where the
    # RoIAlign output of a linear map is itself linear, so the bilinear sample is exact.
    b, q, m, height, width = 2, 3, 4, 10, 14
    aligner = SemanticAligner(D, m, predict_scales=True).double()
    open_content_gate(aligner)
    with torch.no_grad():
        aligner.point_mlp[-1].bias.copy_(torch.tensor(bias_xy + bias_scales, dtype=torch.float64))
    ref = torch.tensor(
        [[0.5, 0.5, 0.4, 0.5], [0.35, 0.6, 0.3, 0.3], [0.6, 0.4, 0.5, 0.4]], dtype=torch.float64
    ).repeat(b, 1, 1)
    valid_ratio = torch.tensor([[1.0, 1.0], [ratio_w, ratio_h]], dtype=torch.float64)
    memory = linear_memory(b, D, height, width)
    out = aligner(torch.randn(b, q, D, dtype=torch.float64), memory, ref, valid_ratio)

    offsets = torch.tanh(torch.tensor(bias_xy, dtype=torch.float64)).view(m, 2)
    expected = ref[:, :, None, :2] + 0.5 * ref[:, :, None, 2:] * offsets
    assert_close(out["points"], expected, atol=1e-12, rtol=0)
    scales = torch.tensor(bias_scales, dtype=torch.float64).view(m, 2)
    assert_close(out["scales"], scales.expand(b, q, m, 2), atol=1e-12, rtol=0)
    # Every point stays inside its reference box.
    centre, half = ref[:, :, None, :2], ref[:, :, None, 2:] / 2
    lo, hi = centre - half, centre + half
    assert bool(((out["points"] >= lo) & (out["points"] <= hi)).all())
    # The sampled content is the memory at the point (in cells of the unpadded map).
    size = torch.tensor([width, height], dtype=torch.float64) * valid_ratio[:, None, None, :]
    assert_close(out["content"][..., :2], expected * size, atol=1e-9, rtol=0)


def test_aligner_gates_scale_content_and_position():
    b, q, m = 1, 3, 2
    aligner = SemanticAligner(D, m, predict_scales=False)
    ref = torch.tensor([0.5, 0.5, 0.4, 0.4]).repeat(b, q, 1)
    tgt, memory = torch.randn(b, q, D), torch.randn(b, D, 8, 8)
    open_content_gate(aligner)
    with torch.no_grad():
        aligner.pos_gate.weight.zero_()
        aligner.pos_gate.bias.fill_(100.0)
    full = aligner(tgt, memory, ref, torch.ones(b, 2))
    assert_close(full["pos"], sine_embed_points(full["points"], D))
    with torch.no_grad():
        aligner.content_gate.bias.fill_(0.0)  # sigmoid(0) = 1/2
        aligner.pos_gate.bias.fill_(0.0)
    half = aligner(tgt, memory, ref, torch.ones(b, 2))
    assert_close(half["content"], full["content"] / 2)
    assert_close(half["pos"], full["pos"] / 2)


# ---------------------------------------------------------------------------- SMCA bias


def brute_force_bias(points, scales, shape, valid_ratio, beta):
    b, q, m, _ = points.shape
    height, width = shape
    out = torch.empty(b, m, q, height * width, dtype=torch.float64)
    for i in range(b):
        for j in range(q):
            for k in range(m):
                px = float(points[i, j, k, 0]) * width * float(valid_ratio[i, 0])
                py = float(points[i, j, k, 1]) * height * float(valid_ratio[i, 1])
                sx, sy = float(scales[i, j, k, 0]), float(scales[i, j, k, 1])
                for row in range(height):
                    for col in range(width):
                        dx, dy = px - (col + 0.5), py - (row + 0.5)
                        value = -(sx * sx * dx * dx + sy * sy * dy * dy) / beta
                        out[i, k, j, row * width + col] = value
    return out


def test_smca_bias_hand_computed():
    # H=2, W=3, point (0.25, 0.25) -> pixel (0.75, 0.5); sx=2, sy=1, beta=8.
    points = torch.tensor([[[[0.25, 0.25]]]])
    scales = torch.tensor([[[[2.0, 1.0]]]])
    bias = smca_gaussian_bias(points, scales, (2, 3), torch.ones(1, 2), 8.0)
    # x terms 4*dx^2 with dx = 0.25, 0.75, 1.75 -> 0.25, 2.25, 12.25; y terms dy^2 = 0, 1.
    expected = -torch.tensor([0.25, 2.25, 12.25, 1.25, 3.25, 13.25]) / 8
    assert bias.shape == (1, 1, 1, 6)
    assert_close(bias[0, 0, 0], expected)


def test_smca_bias_zero_at_own_cell_centre_and_decreasing():
    height, width = 5, 7
    # Point at the centre of cell (row 3, col 2) -> pixel (2.5, 3.5).
    points = torch.tensor([[[[2.5 / width, 3.5 / height]]]], dtype=torch.float64)
    scales = torch.tensor([[[[1.3, 0.7]]]], dtype=torch.float64)
    bias = smca_gaussian_bias(points, scales, (height, width), torch.ones(1, 2), 8.0)
    grid = bias.view(height, width)
    assert grid[3, 2].item() == pytest.approx(0.0, abs=1e-12)
    assert grid.argmax().item() == 3 * width + 2
    assert bool((grid <= 0).all())
    # Moving away from the point along a row or a column strictly lowers the bias.
    assert bool((grid[3, 2:].diff() < 0).all()) and bool((grid[3, :3].diff() > 0).all())
    assert bool((grid[3:, 2].diff() < 0).all()) and bool((grid[:4, 2].diff() > 0).all())


def test_smca_bias_respects_valid_ratio():
    height, width = 4, 8
    # With half the width valid, x = 0.5 of the unpadded image is pixel 2.0, not 4.0.
    points = torch.tensor([[[[0.5, 0.5]]]])
    scales = torch.ones(1, 1, 1, 2)
    ratio = torch.tensor([[0.5, 1.0]])
    grid = smca_gaussian_bias(points, scales, (height, width), ratio, 1.0).view(height, width)
    assert grid[1, 1].item() == pytest.approx(grid[1, 2].item())  # cells 1.5 and 2.5 tie at 2.0
    assert grid[1, 1].item() == pytest.approx(-(0.25 + 0.25))
    moved = smca_gaussian_bias(points * ratio, scales, (height, width), torch.ones(1, 2), 1.0)
    assert_close(grid.view(1, 1, 1, -1), moved)


@settings(max_examples=10, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 6),
    st.floats(0.5, 16.0),
    st.integers(0, 2**16),
)
def test_smca_bias_matches_formula(b, q, m, height, width, beta, seed):
    gen = torch.Generator().manual_seed(seed)
    points = torch.rand(b, q, m, 2, generator=gen, dtype=torch.float64)
    scales = torch.randn(b, q, m, 2, generator=gen, dtype=torch.float64) * 2
    ratio = 0.3 + 0.7 * torch.rand(b, 2, generator=gen, dtype=torch.float64)
    bias = smca_gaussian_bias(points, scales, (height, width), ratio, beta)
    assert bias.shape == (b, m, q, height * width)
    expected = brute_force_bias(points, scales, (height, width), ratio, beta)
    assert_close(bias, expected, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------------------- sine encodings


def test_position_embedding_shape_range_and_values():
    b, height, width, feats = 2, 5, 7, 16
    pos = PositionEmbeddingSine(feats)(torch.zeros(b, height, width, dtype=torch.bool))
    assert pos.shape == (b, 2 * feats, height, width)
    assert pos.dtype == torch.float32
    assert bool((pos.abs() <= 1).all())
    # Channel 0/1 are sin/cos of the first (unit) frequency of y; channel feats that of x.
    y = (torch.arange(height) + 0.5) / height * 2 * math.pi
    x = (torch.arange(width) + 0.5) / width * 2 * math.pi
    assert_close(pos[0, 0, :, 0], y.sin(), atol=1e-5, rtol=0)
    assert_close(pos[0, 1, :, 0], y.cos(), atol=1e-5, rtol=0)
    assert_close(pos[1, feats, 0, :], x.sin(), atol=1e-5, rtol=0)
    assert_close(pos[1, feats + 1, 0, :], x.cos(), atol=1e-5, rtol=0)


def test_grid_encoding_equals_point_encoding_of_cell_centres():
    height, width, feats = 4, 6, 16
    pos = PositionEmbeddingSine(feats)(torch.zeros(1, height, width, dtype=torch.bool))[0]
    ys, xs = torch.meshgrid(
        (torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width, indexing="ij"
    )
    points = torch.stack([xs, ys], dim=-1)  # (H, W, 2) as (x, y)
    assert_close(pos.permute(1, 2, 0), sine_embed_points(points, 2 * feats), atol=1e-5, rtol=0)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 5), st.integers(0, 5))
def test_position_embedding_ignores_padding(height, width, pad_h, pad_w):
    embed = PositionEmbeddingSine(8)
    alone = embed(torch.zeros(1, height, width, dtype=torch.bool))
    mask = torch.ones(1, height + pad_h, width + pad_w, dtype=torch.bool)
    mask[:, :height, :width] = False
    padded = embed(mask)
    assert padded.shape == (1, 16, height + pad_h, width + pad_w)
    assert_close(padded[..., :height, :width], alone, atol=1e-6, rtol=0)


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([4, 8, 32, 64]), st.integers(1, 4), st.integers(0, 2**16))
def test_sine_embed_points_shapes(dim, n, seed):
    points = torch.rand(n, 3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    embed = sine_embed_points(points, dim)
    assert embed.shape == (n, 3, dim)
    assert embed.dtype == torch.float32
    assert bool((embed.abs() <= 1).all())
    # First half encodes y, second half x: swapping the coordinates swaps the halves.
    swapped = sine_embed_points(points.flip(-1), dim)
    assert_close(swapped, torch.cat([embed[..., dim // 2 :], embed[..., : dim // 2]], dim=-1))


def test_sine_embed_points_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        sine_embed_points(torch.rand(3, 4), 8)


def test_position_embedding_needs_even_features():
    with pytest.raises(ValueError, match="even"):
        PositionEmbeddingSine(7)
