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
