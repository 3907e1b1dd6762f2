"""Which weights an epoch's checkpoint offers (trainer.ema_weights), and the average a worker
builds and restores."""

from __future__ import annotations

import pytest
import torch

from pipelines.training.ema_choice import Scores, choose, worker_ema
from pipelines.training.settings import TrainerSettings
from samdetr.engine.coco_eval import METRIC_NAMES


def _scores(ap: float) -> Scores:
    return Scores({k: ap for k in METRIC_NAMES}, [])


@pytest.mark.parametrize(("weights", "raw", "ema", "chosen"), [
    ("better", 0.2, 0.3, "ema"), ("better", 0.3, 0.2, "raw"), ("better", 0.3, 0.3, "raw"),
    ("ema", 0.3, 0.2, "ema"), ("raw", 0.2, 0.3, "raw"),
])
def test_the_checkpoint_offers_the_weights_asked_for(weights, raw, ema, chosen):
    trainer = TrainerSettings("t", ema_decay=0.9, ema_weights=weights)
    choice = choose(trainer, _scores(raw), _scores(ema))
    assert choice.weights == chosen
    assert choice.scores.metrics["AP"] == (ema if chosen == "ema" else raw)
    assert (choice.numbers["raw/AP"], choice.numbers["ema/AP"]) == (raw, ema)
    assert choice.numbers["ema_used"] == float(chosen == "ema")
    assert {f"ema/{k}" for k in METRIC_NAMES} <= set(choice.numbers)


def test_better_compares_on_the_checkpoint_metric():
    trainer = TrainerSettings("t", ema_decay=0.9, checkpoint_metric="AP50")
    raw, ema = _scores(0.5), _scores(0.5)
    ema.metrics["AP50"], ema.metrics["AP"] = 0.6, 0.1
    assert choose(trainer, raw, ema).weights == "ema"


def test_without_an_average_the_trained_weights_are_the_model():
    choice = choose(TrainerSettings("t"), _scores(0.2), None)
    assert (choice.weights, choice.numbers) == ("raw", {})


def test_a_worker_continues_the_checkpoints_average():
    model = torch.nn.Linear(2, 2)
    assert worker_ema(TrainerSettings("t"), model, None) is None  # ema_decay=0: off
    trainer = TrainerSettings("t", ema_decay=0.9)
    fresh = worker_ema(trainer, model, None)
    assert fresh.updates == 0 and fresh.config.decay == 0.9
    saved = {"model": {k: v + 1 for k, v in model.state_dict().items()}, "updates": 7}
    restored = worker_ema(trainer, model, {"ema": saved})
    assert restored.updates == 7
    torch.testing.assert_close(restored.module.weight, model.weight + 1)
    # A checkpoint from before the average was turned on: it starts from the weights.
    assert worker_ema(trainer, model, {"epoch": 3}).updates == 0


@pytest.mark.parametrize(("fields", "message"), [
    ({"ema_decay": 1.0}, r"trainer.ema_decay must be in \[0, 1\)"),
    ({"ema_warmup_steps": -1}, "trainer.ema_warmup_steps must be an integer >= 0"),
    ({"ema_weights": "best"}, r"trainer.ema_weights must be one of \['better', 'ema', 'raw'\]"),
    ({"accumulate": 0}, "trainer.accumulate"),
])
def test_bad_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainerSettings("t", **fields)
