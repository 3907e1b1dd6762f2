"""The settings checks every pipelines dataclass uses (pipelines.common.checks): what passes,
and a message naming the setting and the value for what does not."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.common.checks import flag, non_empty, non_negative, positive_int


@given(st.integers(1, 10**9))
def test_positive_int_takes_integers_from_the_minimum(value):
    positive_int(value, "trainer.epochs")
    positive_int(value - 1, "sweep.seed", minimum=0)


@pytest.mark.parametrize("value", [0, -3, 1.0, "2", True, None])
def test_positive_int_refuses_other_values_naming_them(value):
    with pytest.raises(ValueError, match=r"trainer\.epochs must be an integer >= 1, got "):
        positive_int(value, "trainer.epochs")


@given(st.floats(0, 1e12) | st.integers(0, 10**9))
def test_non_negative_takes_finite_numbers_from_zero(value):
    non_negative(value, "tracking.retry_after_s")


@pytest.mark.parametrize("value", [-0.5, math.inf, math.nan, False, "1", None])
def test_non_negative_refuses_the_rest(value):
    with pytest.raises(ValueError, match=r"tracking\.retry_after_s must be a number >= 0"):
        non_negative(value, "tracking.retry_after_s")


@pytest.mark.parametrize("value", [0, 1, "true", None])
def test_flag_takes_only_booleans(value):
    flag(True, "wait")
    flag(False, "wait")
    with pytest.raises(ValueError, match=r"^wait must be true or false, got "):
        flag(value, "wait")


@pytest.mark.parametrize("value", ["", "   ", None, 3])
def test_non_empty_says_what_it_wanted(value):
    non_empty("x", "sweep.alias")
    with pytest.raises(ValueError, match=r"sweep\.alias must be a non-empty string, got "):
        non_empty(value, "sweep.alias")
    with pytest.raises(ValueError, match="must be an MLflow alias"):
        non_empty(value, "sweep.alias", "an MLflow alias")
