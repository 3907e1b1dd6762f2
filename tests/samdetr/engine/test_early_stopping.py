"""Early stopping's rule: epochs since the metric last improved by more than min_delta."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from samdetr.engine.early_stopping import stale_epochs, stop_reason


@pytest.mark.parametrize("values, min_delta, stale", [
    ([], 0.0, 0),
    ([0.1], 0.0, 0),
    ([0.1, 0.2, 0.3], 0.0, 0),
    ([0.3, 0.2, 0.1], 0.0, 2),
    ([0.1, 0.1], 0.0, 1),  # a tie is no improvement
    ([0.10, 0.105, 0.109, 0.1095], 0.01, 3),  # small gains, together within min_delta
    ([0.10, 0.105, 0.121], 0.01, 0),  # 0.121 beats the best (0.10) by more than 0.01
    ([0.1, math.nan, math.nan], 0.0, 2),  # NaN never improves
])
def test_stale_epochs(values, min_delta, stale):
    assert stale_epochs(values, min_delta) == stale


@given(st.lists(st.floats(0, 1), max_size=12), st.floats(0, 0.2))
def test_stale_epochs_counts_back_to_the_last_record_by_min_delta(values, min_delta):
    stale = stale_epochs(values, min_delta)
    records, best = [], -math.inf  # the epochs that improved, written out directly
    for i, value in enumerate(values):
        if value > best + min_delta:
            records.append(i)
            best = value
    assert stale == (len(values) - 1 - records[-1] if records else 0)


def test_stop_reason_names_the_metric_and_the_best_epoch():
    history = [{"epoch": 0, "AP": 0.2}, {"epoch": 1, "AP": 0.25}, {"epoch": 2, "AP": 0.24},
               {"epoch": 3, "AP": 0.25}]
    assert stop_reason(history, "AP", patience=0) == ""  # off
    assert stop_reason(history, "AP", patience=3) == ""
    reason = stop_reason(history, "AP", patience=2)
    assert reason == ("AP has not improved by more than 0.0 for 2 epoch(s) (best 0.2500, "
                      "epoch 4)")
    assert stop_reason(history, "AP", patience=3, min_delta=0.1) != ""  # 0.25 is within 0.1


@pytest.mark.parametrize("bad", [-0.1, math.inf, True, "0.1"])
def test_bad_min_delta_is_refused(bad):
    with pytest.raises(ValueError, match="min_delta must be a finite number >= 0"):
        stale_epochs([0.1], bad)
