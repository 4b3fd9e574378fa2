from __future__ import annotations

import random

import pytest

from conveyor.common.backoff import RetryPolicy, compute_backoff
from conveyor.common.errors import ConfigurationError


def test_backoff_grows_exponentially_without_jitter() -> None:
    rng = random.Random(1)
    delays = [compute_backoff(a, base=1, factor=2, cap=100, jitter=0, rng=rng) for a in range(1, 6)]
    assert delays == [1, 2, 4, 8, 16]


def test_backoff_is_capped_even_for_huge_attempts() -> None:
    assert compute_backoff(10_000, base=1, factor=4, cap=60, jitter=0, rng=random.Random()) == 60


def test_equal_jitter_stays_within_half_and_full_delay_and_spreads() -> None:
    rng = random.Random(42)
    delays = [compute_backoff(3, base=1, factor=2, cap=100, jitter=0.5, rng=rng) for _ in range(500)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert max(delays) - min(delays) > 1.5, "jitter must spread retries that failed together"


@pytest.mark.parametrize(
    "options",
    [{"max_attempts": 0}, {"jitter": 2}, {"max_age": 0}, {"base": 0}, {"factor": 0.5}, {"cap": 0.5},
     {"cap": 31 * 24 * 3600.0}],  # a backoff past MAX_DELAY (30 days): no broker is asked to keep it
)
def test_policy_rejects_bad_options_with_the_projects_configuration_error(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match="RetryPolicy"):
        RetryPolicy(**options)


@pytest.mark.parametrize(("delay", "says"), [(float("nan"), "not NaN"), (float("inf"), "longer than the longest"),
                                              (31 * 86400.0, "longer than the longest"), ("5", "not str"),
                                              (None, "not NoneType"), (True, "not bool")])
def test_a_delay_no_broker_keeps_is_refused_saying_why(delay: float, says: str) -> None:
    # `conveyor publish --delay nan` said "a delay of nans is longer than the longest Conveyor honours".
    from conveyor.common.backoff import check_delay
    from conveyor.common.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=says):
        check_delay(delay)
    check_delay(30 * 86400.0)  # the longest is kept
