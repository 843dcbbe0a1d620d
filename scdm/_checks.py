"""Argument checks shared by the public functions: one wording for one kind of mistake."""

from __future__ import annotations

import numpy as np


def check_int(name: str, value, minimum: int, why: str = "") -> int:
    """``value`` as an ``int`` when it is an integer (a bool is not) of at least ``minimum``;
    otherwise a ``ValueError`` naming ``name``, the bound and ``why`` it is there."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        bound = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {bound}{why}, got {value!r}.")
    return int(value)


INTERVALS = ("(0, 1)", "[0, 1)", "(0, 1]", "[0, 1]")


def check_fraction(name: str, value, interval: str = "(0, 1)", why: str = "") -> float:
    """``value`` as a ``float`` when it is a number in ``interval`` (one of
    :data:`INTERVALS`); otherwise a ``TypeError`` (not a number) or ``ValueError`` naming
    ``name``, the interval and ``why``."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in {interval}{why}, got {value!r}.") from None
    low_ok = number > 0 if interval[0] == "(" else number >= 0
    high_ok = number < 1 if interval[-1] == ")" else number <= 1
    if not (low_ok and high_ok):  # NaN fails both
        raise ValueError(f"{name} must lie in {interval}{why}, got {value!r}.")
    return number
