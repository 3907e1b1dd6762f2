"""The checks every settings dataclass makes in its ``__post_init__``, with one wording: each
raises ``ValueError`` naming the setting as the user writes it (``trainer.epochs``) and the value
it got, so a bad override is fixed from the message alone."""

from __future__ import annotations

import math
from typing import Any


def positive_int(value: Any, name: str, minimum: int = 1) -> None:
    """``value`` is an integer >= ``minimum`` (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def non_negative(value: Any, name: str) -> None:
    """``value`` is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def flag(value: Any, name: str) -> None:
    """``value`` is ``true`` or ``false`` (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def non_empty(value: Any, name: str, what: str = "a non-empty string") -> None:
    """``value`` is a string with something besides blanks; ``what`` says what it should be."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be {what}, got {value!r}")
