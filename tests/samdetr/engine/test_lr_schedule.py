"""Learning-rate schedules: each equals its formula at every step, a resume continues exactly,
the MultiStepLR state of older checkpoints still loads, and bad settings are refused."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tiny import one_box_batches, tiny_config

from samdetr.builder import build_criterion, build_model
from samdetr.engine.loop import train_one_epoch
from samdetr.engine.lr_schedule import LrSchedule, ScheduleSpec
from samdetr.engine.optim import OptimConfig, build_optimizer, build_scheduler
from samdetr.engine.step import StepOptions

BASE = (1e-3, 1e-4)  # two groups: the transformer's rate and the backbone's


def _optimizer() -> torch.optim.Optimizer:
    weights = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    return torch.optim.AdamW([{"params": [weights[0]], "lr": BASE[0]},
                              {"params": [weights[1]], "lr": BASE[1]}])


def _expected(config: OptimConfig, epochs: int, epoch: int, step: int) -> float:
    """The factor written out from the docs' definitions, independently of the class."""
    if config.schedule == "step":
        factor = config.lr_gamma ** len([d for d in config.lr_drop_epochs if epoch >= d])
    else:
        cosine = 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))
        factor = config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine
    if step < config.warmup_steps:
        factor *= config.warmup_start + (1 - config.warmup_start) * step / config.warmup_steps
    return factor


def _walk(schedule: LrSchedule, optimizer, epochs: range, steps_per_epoch: int, start_step: int
          ) -> list[tuple[int, int, list[float]]]:
    """(epoch, step, rates) before every optimizer step, stepping the schedule as a run does."""
    seen, step = [], start_step
    for epoch in epochs:
        for _ in range(steps_per_epoch):
            seen.append((epoch, step, [g["lr"] for g in optimizer.param_groups]))
            optimizer.step()
            schedule.step_batch()
            step += 1
        schedule.step()
    return seen


@settings(max_examples=40, deadline=None)
@given(
    schedule=st.sampled_from(["step", "cosine"]),
    warmup=st.integers(0, 7),
    epochs=st.integers(1, 6),
    steps_per_epoch=st.integers(1, 4),
    stop=st.integers(0, 6),
    data=st.data(),
)
def test_every_step_follows_the_formula_and_a_resume_continues_exactly(
        schedule, warmup, epochs, steps_per_epoch, stop, data):
    drops = data.draw(st.lists(st.integers(1, 6), unique=True, max_size=2).map(sorted))
    config = OptimConfig(schedule=schedule, lr_drop_epochs=tuple(drops), lr_gamma=0.5,
                         warmup_steps=warmup, warmup_start=0.01, min_lr_ratio=0.05)
    stop = min(stop, epochs)
    optimizer = _optimizer()
    whole = build_scheduler(optimizer, config, epochs=epochs)
    seen = _walk(whole, optimizer, range(epochs), steps_per_epoch, 0)
    for epoch, step, rates in seen:
        factor = _expected(config, epochs, epoch, step)
        assert rates == pytest.approx([b * factor for b in BASE], rel=1e-12), (epoch, step)

    # Stopped after `stop` epochs, then a new optimizer and schedule loaded from the states.
    first = _optimizer()
    schedule_a = build_scheduler(first, config, epochs=epochs)
    _walk(schedule_a, first, range(stop), steps_per_epoch, 0)
    second = _optimizer()
    second.load_state_dict(first.state_dict())
    schedule_b = build_scheduler(second, config, epochs=epochs)
    schedule_b.load_state_dict(schedule_a.state_dict())
    resumed = _walk(schedule_b, second, range(stop, epochs), steps_per_epoch,
                    stop * steps_per_epoch)
    assert resumed == seen[stop * steps_per_epoch:]  # the same rates, exactly


def test_the_official_drop_is_unchanged_and_old_checkpoints_load():
    config = OptimConfig(lr_drop_epochs=(2, 4), lr_gamma=0.1)
    legacy_optimizer = _optimizer()
    legacy = torch.optim.lr_scheduler.MultiStepLR(legacy_optimizer, milestones=[2, 4], gamma=0.1)
    optimizer = _optimizer()
    schedule = build_scheduler(optimizer, config)
    for epoch in range(6):
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
            [g["lr"] for g in legacy_optimizer.param_groups], rel=1e-12), epoch
        if epoch == 2:  # a run saved by MultiStepLR resumes on the same rates
            restored_optimizer = _optimizer()
            restored = build_scheduler(restored_optimizer, config)
            restored.load_state_dict(legacy.state_dict())
            assert restored.get_last_lr() == pytest.approx(legacy.get_last_lr(), rel=1e-12)
        legacy_optimizer.step(), optimizer.step()
        legacy.step(), schedule.step()


def test_train_one_epoch_reports_the_rate_each_step_took():
    torch.manual_seed(0)
    config = tiny_config()
    model, criterion, batches = build_model(config), build_criterion(config), one_box_batches(3)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, lr_backbone=1e-4))
    schedule = build_scheduler(optimizer, OptimConfig(warmup_steps=2, warmup_start=0.1))
    seen = {}
    train_one_epoch(model, criterion, optimizer, batches, torch.device("cpu"), StepOptions(
        on_step=lambda step, values: seen.update({step: values["lr"]}), log_every=1,
        after_step=schedule.step_batch))
    assert seen == pytest.approx({1: 1e-4, 2: 1e-3 * 0.55, 3: 1e-3}, rel=1e-9)
    assert schedule.steps == 3


@pytest.mark.parametrize("fields, message", [
    ({"schedule": "linear"}, "optim.schedule must be one of"),
    ({"warmup_steps": -1}, "optim.warmup_steps"),
    ({"warmup_steps": 2.5}, "optim.warmup_steps"),
    ({"warmup_start": 0}, r"optim.warmup_start must be in \(0, 1\]"),
    ({"min_lr_ratio": 1.5}, r"optim.min_lr_ratio must be in \[0, 1\]"),
])
def test_bad_schedule_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**fields)


def test_a_cosine_schedule_needs_the_run_length_and_a_state_must_fit():
    with pytest.raises(ValueError, match="cosine schedule needs the run's epochs"):
        build_scheduler(_optimizer(), OptimConfig(schedule="cosine"))
    schedule = LrSchedule(_optimizer(), ScheduleSpec())
    with pytest.raises(ValueError, match="not a learning-rate schedule's state"):
        schedule.load_state_dict({"milestones": {}})
    with pytest.raises(ValueError, match="1 parameter groups, the optimizer 2"):
        schedule.load_state_dict({"epoch": 1, "steps": 3, "base_lrs": [1.0]})
