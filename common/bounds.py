"""Numbers that enter through a public constructor: checked once, each refused in one line that
names it. ``x <= 0`` alone lets NaN through (every comparison with it is false) and infinity
past every lower bound; both are no timeout at all, or a loop that never ends."""

from __future__ import annotations

import math

from conveyor.common.errors import ConfigurationError

__all__ = ["DAY", "count", "seconds"]

DAY = 86400.0


def seconds(name: str, value: float, *, zero_ok: bool = False, at_most: float = DAY) -> float:
    """``value`` as a duration: a finite number of seconds, > 0 (or ≥ 0), at most ``at_most``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    low_ok = value >= 0 if zero_ok else value > 0
    if not low_ok or value > at_most:
        low = "≥ 0" if zero_ok else "> 0"
        raise ConfigurationError(f"{name} must be {low} and at most {at_most:g} seconds, not {value!r}")
    return float(value)


def count(name: str, value: int, *, at_least: int = 1, at_most: int | None = None) -> int:
    """``value`` as a count: a whole number from ``at_least`` to ``at_most``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be a whole number, not {value!r}")
    if value < at_least or (at_most is not None and value > at_most):
        top = f" and at most {at_most}" if at_most is not None else ""
        raise ConfigurationError(f"{name} must be at least {at_least}{top}, not {value!r}")
    return value
