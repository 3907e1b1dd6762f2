"""Gradient accumulation: k batches per optimizer step update the weights as one batch k times as
large would (the matcher and the box-count normaliser included)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tiny import boxed_batch, merged, tiny_config

from samdetr.builder import build_criterion, build_model
from samdetr.engine.loop import train_one_epoch
from samdetr.engine.optim import OptimConfig, build_optimizer
from samdetr.engine.step import StepOptions


def _parts(sgd: bool = False):
    torch.manual_seed(0)
    config = tiny_config()
    model, criterion = build_model(config), build_criterion(config)
    if sgd:  # its update is the gradient itself (AdamW's divides near-zero ones by their size)
        return model, criterion, torch.optim.SGD(model.parameters(), lr=0.05)
    return model, criterion, build_optimizer(model, OptimConfig(lr=1e-3, lr_backbone=1e-4))


def _train(batches, accumulate: int):
    """The weights' updates after training on ``batches``, and the epoch's numbers."""
    model, criterion, optimizer = _parts(sgd=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # The recipe's clipping: it scales the step's gradients as a whole.
    stats = train_one_epoch(model, criterion, optimizer, batches, torch.device("cpu"),
                            StepOptions(clip_max_norm=0.1, accumulate=accumulate))
    return {name: p.detach() - before[name] for name, p in model.named_parameters()}, stats


def test_three_batches_per_step_update_as_one_batch_three_times_as_large():
    small = [boxed_batch(seed, size=1) for seed in (1, 2, 3, 4, 5)]
    accumulated, stats = _train(small, accumulate=3)
    # The epoch's last step takes the two batches left.
    reference, big = _train([merged(*small[:3]), merged(*small[3:])], accumulate=1)
    assert (stats["steps"], stats["batches"], stats["images"]) == (2, 5, 5)
    assert (big["steps"], big["batches"], big["images"]) == (2, 2, 5)
    assert stats["loss"] == pytest.approx(big["loss"], rel=1e-5)
    # Updates of up to 1e-4 here, equal to 3e-8 (float32 sums in another order).
    for name, value in reference.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-4, atol=1e-7, msg=name)
    # Three batches, each normalised by its own boxes (accumulate=1), train something else.
    separate, _ = _train(small, accumulate=1)
    assert any(not torch.allclose(separate[n], v, rtol=1e-4, atol=1e-7)
               for n, v in reference.items())


def test_the_class_error_of_a_step_is_the_mean_of_its_batches():
    logged = []
    model, criterion, optimizer = _parts()
    train_one_epoch(model, criterion, optimizer, [boxed_batch(1), boxed_batch(2)],
                    torch.device("cpu"),
                    StepOptions(accumulate=2, log_every=1, on_step=lambda s, v: logged.append(v)))
    assert len(logged) == 1 and 0.0 <= logged[0]["class_error"] <= 100.0


@settings(max_examples=8, deadline=None)
@given(count=st.integers(1, 5), accumulate=st.integers(1, 3))
def test_an_epoch_takes_one_step_per_accumulate_batches(count, accumulate):
    model, criterion, optimizer = _parts()
    after = []
    stats = train_one_epoch(model, criterion, optimizer,
                            [boxed_batch(s, size=1) for s in range(count)], torch.device("cpu"),
                            StepOptions(accumulate=accumulate, after_step=lambda: after.append(1)))
    assert stats["steps"] == len(after) == math.ceil(count / accumulate)
    assert stats["batches"] == stats["images"] == count


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_accumulate_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="accumulate must be an integer >= 1"):
        StepOptions(accumulate=value)
