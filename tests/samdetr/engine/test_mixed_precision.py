"""float16 training with loss scaling: a step whose gradients overflow is skipped, leaving the
weights and the optimizer state as they were, and counted; the next step trains."""

from __future__ import annotations

import torch
from support.tiny import one_box_batches, tiny_config

from samdetr.builder import build_criterion, build_model
from samdetr.engine.loop import train_one_epoch
from samdetr.engine.optim import OptimConfig, build_optimizer
from samdetr.engine.step import StepOptions


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_an_overflowing_fp16_step_is_skipped_and_the_next_one_trains():
    torch.manual_seed(0)
    config = tiny_config()
    model, criterion = build_model(config), build_criterion(config)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, lr_backbone=1e-4))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    # The first backward pass puts an inf into one gradient, as a float16 overflow would.
    head = model.class_heads[-1].weight  # the last decoder layer's class head
    calls = []

    def overflow_once(grad):
        calls.append(1)
        return grad * float("inf") if len(calls) == 1 else grad

    head.register_hook(overflow_once)
    before = _weights(model)
    stats = train_one_epoch(model, criterion, optimizer, one_box_batches(1), torch.device("cpu"),
                            StepOptions(autocast_dtype=torch.float16, grad_scaler=scaler))
    assert stats["steps"] == 1 and stats["skipped_steps"] == 1
    after = _weights(model)
    assert all(torch.equal(before[name], after[name]) for name in before)  # not one moved
    assert not optimizer.state  # AdamW took no step: no moments
    assert scaler.get_scale() == 2.0**9  # halved by the overflow

    stats = train_one_epoch(model, criterion, optimizer, one_box_batches(1), torch.device("cpu"),
                            StepOptions(autocast_dtype=torch.float16, grad_scaler=scaler))
    assert stats["skipped_steps"] == 0
    trained = _weights(model)
    assert any(not torch.equal(after[name], trained[name]) for name in after)
    assert all(torch.isfinite(w).all() for w in trained.values())


def test_without_a_scaler_nothing_is_skipped():
    torch.manual_seed(0)
    config = tiny_config()
    model, criterion = build_model(config), build_criterion(config)
    optimizer = build_optimizer(model, OptimConfig())
    stats = train_one_epoch(model, criterion, optimizer, one_box_batches(2), torch.device("cpu"))
    assert stats["steps"] == 2 and stats["skipped_steps"] == 0
