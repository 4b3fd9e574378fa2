"""Retry delays: one pure function, so every backend retries on the same schedule."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from conveyor.common.errors import ConfigurationError

__all__ = ["MAX_DELAY", "RetryPolicy", "check_delay", "compute_backoff"]

# The longest delay a message may be published with (30 days), on every transport: a job's own
# delay, a retry's backoff, a deferral. Longer is refused, never shortened: a delayed job must
# not run early.
MAX_DELAY = 30 * 24 * 3600.0


def check_delay(delay: float) -> None:
    """Refuse a delay longer than ``MAX_DELAY`` (or NaN, or not a number) with a one-line
    ``ConfigurationError``."""
    if isinstance(delay, bool) or not isinstance(delay, int | float):  # "5" compared with a float: TypeError
        raise ConfigurationError(f"a delay must be a number of seconds, not {type(delay).__name__}")
    if delay != delay:  # NaN: "a delay of nans is longer than …" said the opposite of the problem
        raise ConfigurationError("a delay must be a number of seconds, not NaN")
    if not delay <= MAX_DELAY:
        raise ConfigurationError(f"a delay of {delay:g}s is longer than the longest Conveyor honours "
                                 f"({MAX_DELAY:g}s, 30 days)")


def compute_backoff(
    attempt: int, *, base: float, factor: float, cap: float, jitter: float, rng: random.Random
) -> float:
    """Seconds to wait before attempt ``attempt + 1``, after attempt ``attempt`` failed.

    ``delay = min(cap, base × factor^(attempt−1)) × (1 − jitter × u)``, ``u ~ Uniform[0, 1)``

    With ``jitter = 0.5`` ("equal jitter") a delay falls in [½·d, d]: retries of jobs that
    failed together spread out (no thundering herd against a recovering dependency) while
    the schedule keeps growing, which full jitter (``jitter = 1``) would not guarantee.
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    exponent = min(attempt - 1, 64)  # large attempts must not overflow before the cap
    ceiling = min(cap, base * factor**exponent)
    return ceiling * (1.0 - jitter * rng.random())


@dataclass(frozen=True)
class RetryPolicy:
    """What a failed job may spend: attempts *and* age, both bounded."""

    max_attempts: int = 5
    max_age: float = 24 * 3600.0  # seconds since the job was created
    base: float = 1.0
    factor: float = 4.0
    cap: float = 3600.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        numbers = {"max_age": self.max_age, "base": self.base, "factor": self.factor, "cap": self.cap,
                   "jitter": self.jitter}
        for name, value in numbers.items():
            if math.isnan(value):  # every comparison below is false for NaN: it passed them all
                raise ConfigurationError(f"RetryPolicy: {name} must be a number, not NaN")
        if self.max_age <= 0:
            raise ConfigurationError(f"RetryPolicy: max_age must be > 0 seconds, not {self.max_age}")
        if self.max_attempts < 1:
            raise ConfigurationError(f"RetryPolicy: max_attempts must be ≥ 1, not {self.max_attempts}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ConfigurationError(f"RetryPolicy: jitter must be within [0, 1], not {self.jitter}")
        if self.base <= 0 or self.factor < 1 or self.cap < self.base:
            raise ConfigurationError("RetryPolicy: need base > 0, factor ≥ 1 and cap ≥ base")
        if self.cap > MAX_DELAY:
            raise ConfigurationError(f"RetryPolicy: cap must be ≤ {MAX_DELAY:g} seconds (30 days), not {self.cap}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        return compute_backoff(
            attempt, base=self.base, factor=self.factor, cap=self.cap, jitter=self.jitter, rng=rng
        )
