from __future__ import annotations

import random

from conveyor.common.clock import FakeClock
from conveyor.consumer.breaker import BreakerConfig, BreakerState, CircuitBreaker


def make(**config) -> tuple[CircuitBreaker, FakeClock, list[BreakerState]]:
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker("dep", BreakerConfig(**config), clock, lambda b: changes.append(b.state))
    return breaker, clock, changes


def test_consecutive_failures_open_the_breaker() -> None:
    breaker, _, changes = make(consecutive_failures=3)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and changes == [BreakerState.OPEN]
    assert not breaker.allow()


def test_failure_rate_opens_the_breaker_once_enough_calls_were_seen() -> None:
    breaker, _, _ = make(consecutive_failures=100, failure_rate=0.5, window=10, min_calls=10)
    for i in range(9):
        (breaker.record_failure if i % 2 else breaker.record_success)()
    assert breaker.state is BreakerState.CLOSED  # 4/9 failures, and under min_calls
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN  # 5/10


def test_half_open_lets_exactly_one_probe_through_then_closes_on_success() -> None:
    breaker, clock, changes = make(consecutive_failures=1, reset_timeout=30)
    breaker.record_failure()
    clock.advance(29)
    assert not breaker.allow()
    clock.advance(2)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record_success()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    assert breaker.allow()


def test_failed_probe_opens_again_and_restarts_the_timer() -> None:
    breaker, clock, _ = make(consecutive_failures=1, reset_timeout=10)
    breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(5)
    assert not breaker.allow()


def test_a_cancelled_probe_does_not_wedge_the_breaker() -> None:
    breaker, clock, _ = make(consecutive_failures=1, reset_timeout=1)
    breaker.record_failure()
    clock.advance(1)
    assert breaker.allow()
    breaker.abandon_probe()
    assert breaker.allow()


def test_each_key_takes_one_probe_per_half_open_period() -> None:
    breaker, clock, _ = make(consecutive_failures=1, reset_timeout=10)
    breaker.record_failure()
    clock.advance(10)
    assert breaker.allow("q1") and breaker.allow("q2")  # one probe per queue
    assert not breaker.allow("q1") and not breaker.allow("q2")


def test_a_probe_taken_from_the_broker_still_runs_after_another_queues_probe_reopened_the_breaker() -> None:
    breaker, clock, _ = make(consecutive_failures=1, reset_timeout=10)
    breaker.record_failure()
    assert not breaker.allow("q2"), "open, and no half-open period yet: nobody probes"
    clock.advance(10)
    assert breaker.allow("q1")
    breaker.record_failure()  # q1's probe failed first
    assert breaker.state is BreakerState.OPEN
    assert breaker.allow("q2"), "q2's probe was delivered in the half-open period: not handed back"
    assert not breaker.allow("q1") and not breaker.allow("q2"), "each key probed: wait for the next period"
    clock.advance(10)
    assert breaker.allow("q1") and breaker.allow("q2")
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert not breaker.allow("q3"), "opened from closed: no probe before the next half-open"


def test_the_failure_rate_is_that_of_the_last_window_calls_through_many_opens_and_closes() -> None:
    """The failures in the window are counted as calls come and go (no scan): after every call the
    breaker opens exactly when the last ``window`` results, worked out by hand, say it must."""
    opened = 0
    rng = random.Random(18)
    for window, min_calls, rate in ((1, 1, 1.0), (5, 3, 0.6), (10, 10, 0.5), (50, 20, 0.3)):
        breaker, clock, _ = make(consecutive_failures=10**6, failure_rate=rate, window=window, min_calls=min_calls)
        seen: list[bool] = []
        for _ in range(3000):
            if breaker.state is BreakerState.OPEN:  # wait it out, then a probe closes it (a fresh window)
                clock.advance(breaker.config.reset_timeout)
                breaker.half_open()
                assert breaker.allow("q")
                breaker.record_success()
                seen = []  # closing starts a fresh window
                opened += 1
                continue
            ok = rng.random() < 0.6
            (breaker.record_success if ok else breaker.record_failure)()
            seen = (seen + [ok])[-window:]
            # Only a failure trips it (a success never opens a closed breaker).
            expected_open = not ok and len(seen) >= min_calls and seen.count(False) / len(seen) >= rate
            assert (breaker.state is BreakerState.OPEN) is expected_open
    assert opened > 100  # the window filled, slid and restarted many times over
