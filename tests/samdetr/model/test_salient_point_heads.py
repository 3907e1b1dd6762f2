"""A numeric check of the salient-point head split for any M (not only the official M = 8).

Salient point m feeds cross-attention head m: its sampled content and position (the aligner's
gates), its query, its value slice of D / M features and its columns of the output projection
(and, with SMCA, its Gaussian bias). Relabelling the points consistently in all of those
parameters must leave the detector's outputs unchanged and permute the points it reports; a
head split that pairs the wrong pieces (a transposed view, values split by another head count,
gates read in another order) breaks this equivariance.
"""

from __future__ import annotations

import pytest
import torch
from support.tiny import tiny_config

from samdetr.batching import pad_images
from samdetr.builder import build_model

D = 32


def _blocks(tensor: torch.Tensor, order: list[int], size: int, dim: int = 0,
            start: int = 0) -> torch.Tensor:
    """``tensor`` with consecutive blocks of ``size`` along ``dim`` (from ``start``) reordered:
    new block m = old block order[m]."""
    index = torch.arange(tensor.shape[dim])
    for m, source in enumerate(order):
        index[start + m * size: start + (m + 1) * size] = torch.arange(
            start + source * size, start + (source + 1) * size)
    return tensor.index_select(dim, index)


@torch.no_grad()
def relabel_points(model: torch.nn.Module, order: list[int], only: str | None = None) -> None:
    """Relabel the salient points of every decoder layer: new point m = old point order[m].
    ``only``: relabel just that part (a deliberately inconsistent relabelling)."""
    m = len(order)
    for layer in model.transformer.decoder.layers:
        last = layer.aligner.point_mlp[-1]
        parts = {
            # offsets (x, y) per point, then with SMCA the scales (sx, sy) per point
            "offsets": [(last.weight, 2, 0, 0), (last.bias, 2, 0, 0)],
            "scales": [(last.weight, 2, 0, 2 * m), (last.bias, 2, 0, 2 * m)]
            if last.out_features == 4 * m else [],
            "gates": [(p, D, 0, 0) for gate in (layer.aligner.content_gate,
                                                 layer.aligner.pos_gate)
                      for p in (gate.weight, gate.bias)],
            "values": [(layer.cross_attn.v.weight, D // m, 0, 0),
                       (layer.cross_attn.v.bias, D // m, 0, 0),
                       (layer.cross_attn.out_proj.weight, D // m, 1, 0)],
        }
        for name, entries in parts.items():
            if only is not None and name != only:
                continue
            for param, size, dim, start in entries:
                param.copy_(_blocks(param, order, size, dim, start))


def _run(model, images, mask):
    out = model(images, mask)
    return out["pred_logits"], out["pred_boxes"]


@pytest.mark.parametrize("m", [1, 2, 4, 8])
@pytest.mark.parametrize("smca", [False, True], ids=["sam", "smca"])
def test_relabelled_points_give_the_same_detections(m, smca):
    torch.manual_seed(m)
    model = build_model(tiny_config(num_salient_points=m, smca=smca)).eval()
    images, mask = pad_images([torch.randn(3, 96, 128), torch.randn(3, 80, 112)])
    before = _run(model, images, mask)
    order = torch.randperm(m, generator=torch.Generator().manual_seed(1)).tolist()
    if m > 1 and order == list(range(m)):
        order = order[1:] + order[:1]
    relabel_points(model, order)
    after = _run(model, images, mask)
    torch.testing.assert_close(after[0], before[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after[1], before[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("part", ["gates", "values", "offsets"])
def test_an_inconsistent_relabelling_changes_the_detections(part):
    """The check above can fail: relabelling one part alone pairs points with other heads."""
    torch.manual_seed(0)
    model = build_model(tiny_config(num_salient_points=4)).eval()
    images, mask = pad_images([torch.randn(3, 96, 128), torch.randn(3, 80, 112)])
    before = _run(model, images, mask)
    relabel_points(model, [1, 2, 3, 0], only=part)
    after = _run(model, images, mask)
    assert (after[0] - before[0]).abs().max() > 1e-3
