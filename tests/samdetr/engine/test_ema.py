"""The moving average of the weights: its closed form over a few steps, a resume that goes on as
if uninterrupted, and no update from a step the grad scaler skipped."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tiny import one_box_batches, tiny_config

from samdetr.builder import build_criterion, build_model
from samdetr.engine.ema import EmaConfig, ModelEma
from samdetr.engine.loop import train_one_epoch
from samdetr.engine.optim import OptimConfig, build_optimizer
from samdetr.engine.step import StepOptions


def _weights_after_each_step(model: torch.nn.Linear, steps: int, seed: int) -> list:
    """Move the weights ``steps`` times at random; what they were after each move."""
    generator = torch.Generator().manual_seed(seed)
    seen = []
    for _ in range(steps):
        with torch.no_grad():
            model.weight.add_(torch.randn(model.weight.shape, generator=generator))
        seen.append(model.weight.detach().clone())
    return seen


@settings(max_examples=20, deadline=None)
@given(decay=st.floats(0.01, 0.999), warmup=st.integers(0, 5), steps=st.integers(1, 6))
def test_the_average_follows_its_closed_form(decay, warmup, steps):
    model = torch.nn.Linear(3, 2)
    ema = ModelEma(model, EmaConfig(decay=decay, warmup_steps=warmup))
    expected = None
    generator = torch.Generator().manual_seed(1)
    for n in range(1, steps + 1):
        with torch.no_grad():
            model.weight.add_(torch.randn(model.weight.shape, generator=generator))
        ema.update(model)
        d = 0.0 if n == 1 else decay * (1.0 if warmup == 0 else 1.0 - math.exp(-n / warmup))
        weights = model.weight.detach()
        expected = weights.clone() if expected is None else d * expected + (1 - d) * weights
        torch.testing.assert_close(ema.module.weight, expected, rtol=1e-5, atol=1e-6)
    assert ema.updates == steps
    assert not ema.module.weight.requires_grad


def test_a_resumed_average_goes_on_as_an_uninterrupted_one():
    config = EmaConfig(decay=0.8, warmup_steps=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    moves = _weights_after_each_step(model, 6, seed=3)

    def follow(ema, net, weights):
        for w in weights:
            net.weight.data.copy_(w)
            ema.update(net)

    model.load_state_dict(start)
    whole = ModelEma(model, config)
    follow(whole, model, moves)  # six updates in one go
    model.load_state_dict(start)
    first = ModelEma(model, config)
    follow(first, model, moves[:3])  # three, then a stop
    saved = first.state_dict()
    again = torch.nn.Linear(3, 2)  # a new process: the run's weights and average restored
    again.load_state_dict(model.state_dict())
    resumed = ModelEma(again, config)
    resumed.load_state_dict(saved)
    assert resumed.updates == 3
    follow(resumed, again, moves[3:])
    for name, value in whole.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[name], value, msg=name)
    with pytest.raises(ValueError, match="an EMA state is"):
        resumed.load_state_dict({"model": saved["model"]})


def test_the_average_is_of_the_model_inside_a_wrapper():
    class Wrapper(torch.nn.Module):  # as DDP keeps its model in .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    inner = torch.nn.Linear(2, 2)
    ema = ModelEma(Wrapper(inner), EmaConfig(decay=0.5, warmup_steps=0))
    assert set(ema.module.state_dict()) == {"weight", "bias"}
    with torch.no_grad():
        inner.weight.add_(1.0)
    ema.update(Wrapper(inner))
    torch.testing.assert_close(ema.module.weight, inner.weight)  # the first update copies


def test_training_updates_the_average_after_each_step_but_not_after_a_skipped_one():
    torch.manual_seed(0)
    config = tiny_config()
    model, criterion = build_model(config), build_criterion(config)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, lr_backbone=1e-4))
    ema = ModelEma(model, EmaConfig(decay=0.9, warmup_steps=0))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    calls = []

    def overflow_once(grad):  # the first backward pass overflows, as in float16
        calls.append(1)
        return grad * float("inf") if len(calls) == 1 else grad

    model.class_heads[-1].weight.register_hook(overflow_once)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    options = StepOptions(autocast_dtype=torch.float16, grad_scaler=scaler, ema=ema)
    stats = train_one_epoch(model, criterion, optimizer, one_box_batches(1), torch.device("cpu"),
                            options)
    assert stats["skipped_steps"] == 1 and ema.updates == 0
    assert all(torch.equal(v, ema.module.state_dict()[k]) for k, v in before.items())
    stats = train_one_epoch(model, criterion, optimizer, one_box_batches(3), torch.device("cpu"),
                            options)
    assert stats["skipped_steps"] == 0 and ema.updates == 3
    assert all(torch.isfinite(v).all() for v in ema.module.state_dict().values())


@pytest.mark.parametrize(("fields", "message"), [
    ({"decay": 1.0}, "decay must be in"), ({"decay": -0.1}, "decay must be in"),
    ({"decay": True}, "decay must be in"), ({"warmup_steps": -1}, "warmup_steps must be"),
    ({"warmup_steps": 1.5}, "warmup_steps must be"),
])
def test_bad_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        EmaConfig(**fields)


def test_an_average_needs_a_decay():
    with pytest.raises(ValueError, match="needs a decay > 0"):
        ModelEma(torch.nn.Linear(1, 1), EmaConfig())
