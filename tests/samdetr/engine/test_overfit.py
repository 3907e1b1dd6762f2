"""Training signal end to end: a tiny model overfits one small batch within a few dozen steps."""

from __future__ import annotations

import pytest
import torch
from support.tiny import tiny_config

from samdetr.builder import build_criterion, build_model


@pytest.mark.parametrize("decoder,smca", [("sam", False), ("sam", True), ("baseline", False)])
def test_overfits_one_batch(decoder, smca):
    torch.manual_seed(0)
    config = tiny_config(decoder=decoder, smca=smca)
    model = build_model(config).train()
    criterion = build_criterion(config)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    targets = [
        {
            "labels": torch.tensor([1, 3]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]),
        },
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(60):
        losses = criterion(model(images), targets, num_boxes=3.0)
        total = criterion.weighted_total(losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert all(torch.isfinite(torch.tensor(history)))
    # Measured (the official init: heads cloned into every layer), the mean of the last 5 steps
    # over the first 5: 0.53 (SAM), 0.63 (SMCA), 0.55 (baseline); a broken gradient path stalls
    # far above 0.7.
    assert sum(history[-5:]) / 5 < 0.7 * sum(history[:5]) / 5, history
