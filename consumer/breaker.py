"""Circuit breakers: stop pulling work while a dependency is down.

A breaker opens after ``consecutive_failures`` failures in a row, or when the failure
rate over the last ``window`` calls reaches ``failure_rate`` (once ``min_calls`` were
seen). While open, the worker cancels its consumers on the affected queues, so messages
stay in the broker and no attempt is spent. After ``reset_timeout`` it goes half-open:
exactly one probe call *per probe key* is let through; success closes it, failure opens it
again.

The worker's probe key is the queue: while half-open, each queue the breaker guards has a
consumer of prefetch 1, so its one delivery is its probe, and a probe is never turned away.
Its key keeps its probe for the rest of the half-open period even if another key's probe
opens the breaker first: that delivery was already taken from the broker, and handing it
back would be a redelivery, which RabbitMQ 4 counts towards the queue's delivery limit, in
every open/half-open cycle. A key that has probed waits for the next period.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conveyor.common import bounds
from conveyor.common.clock import Clock
from conveyor.common.defaults import DEFAULT_BREAKER_CONSECUTIVE_FAILURES, DEFAULT_BREAKER_RESET_TIMEOUT
from conveyor.common.errors import CircuitOpen, ConfigurationError, PermanentError, RejectedMessage
from conveyor.common.jobs.context import JobContext
from conveyor.common.middleware import ConsumeNext, Middleware

if TYPE_CHECKING:
    from conveyor.common.jobs.registry import JobSpec

__all__ = ["BreakerBoard", "BreakerConfig", "BreakerMiddleware", "BreakerState", "CircuitBreaker"]


class BreakerState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerConfig:
    consecutive_failures: int = DEFAULT_BREAKER_CONSECUTIVE_FAILURES
    failure_rate: float = 0.5
    window: int = 50
    min_calls: int = 20
    reset_timeout: float = DEFAULT_BREAKER_RESET_TIMEOUT

    def __post_init__(self) -> None:
        bounds.count("breaker consecutive_failures", self.consecutive_failures)
        bounds.count("breaker window", self.window)
        bounds.count("breaker min_calls", self.min_calls)
        # A breaker that never half-opens (inf) would hold its jobs in the broker for good.
        bounds.seconds("breaker reset_timeout", self.reset_timeout)
        if not 0 < self.failure_rate <= 1:
            raise ConfigurationError(f"breaker failure_rate must be in (0, 1], not {self.failure_rate!r}")


Listener = Callable[["CircuitBreaker"], None]


class CircuitBreaker:
    def __init__(self, name: str, config: BreakerConfig, clock: Clock, listener: Listener) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._listener = listener
        self.state = BreakerState.CLOSED
        self.opened_at = 0.0
        self._consecutive = 0
        self._results: collections.deque[bool] = collections.deque(maxlen=config.window)
        self._failures = 0  # False entries in _results, kept as they come and go: no scan per failure
        self._probing = False  # a half-open period began since the breaker last closed
        self._probed: set[str] = set()  # keys that took their probe in this period

    def allow(self, key: str = "") -> bool:
        """May a call go ahead? After a half-open began, each ``key``'s first call is its probe."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock.monotonic() - self.opened_at >= self.config.reset_timeout:
            self._transition(BreakerState.HALF_OPEN)
        if key in self._probed or not self._probing:
            return False
        self._probed.add(key)
        return True

    def admits(self, key: str | None = None) -> bool:
        """Would ``allow`` let a call through now? Unlike ``allow`` it takes no probe; without a
        key, half-open admits (the call's own ``allow`` decides)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock.monotonic() - self.opened_at >= self.config.reset_timeout:
            return True
        if key is None:
            return self.state is BreakerState.HALF_OPEN
        return self._probing and key not in self._probed

    def record_success(self) -> None:
        self._consecutive = 0
        self._remember(True)
        if self.state is not BreakerState.CLOSED:
            self._results.clear()
            self._failures = 0
            self._transition(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._consecutive += 1
        self._remember(False)
        if self.state is BreakerState.HALF_OPEN or self._tripped():
            self.opened_at = self._clock.monotonic()
            self._transition(BreakerState.OPEN)

    def _remember(self, ok: bool) -> None:
        results = self._results
        if results and len(results) == results.maxlen and not results[0]:
            self._failures -= 1  # the oldest, a failure, drops out of the window
        results.append(ok)
        if not ok:
            self._failures += 1

    def abandon_probe(self, key: str = "") -> None:
        """A probe that ended without a verdict (cancelled): its key may probe again."""
        self._probed.discard(key)

    def half_open(self) -> None:
        """Called by the worker's timer when ``reset_timeout`` has passed."""
        if self.state is BreakerState.OPEN:
            self._transition(BreakerState.HALF_OPEN)

    def _tripped(self) -> bool:
        if self.state is BreakerState.OPEN:
            return False
        if self._consecutive >= self.config.consecutive_failures:
            return True
        if len(self._results) < self.config.min_calls:
            return False
        return self._failures / len(self._results) >= self.config.failure_rate

    def _transition(self, state: BreakerState) -> None:
        if state is self.state:
            return
        self.state = state
        if state is BreakerState.CLOSED:
            self._consecutive = 0
            self._probing = False
        elif state is BreakerState.HALF_OPEN:
            self._probing = True  # a new period: every key may probe once
            self._probed.clear()
        self._listener(self)


class BreakerBoard:
    """All breakers of one worker, created on first use, each reporting state changes."""

    def __init__(self, config: BreakerConfig, clock: Clock, listener: Listener) -> None:
        self._config = config
        self._clock = clock
        self._listener = listener
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(name, self._config, self._clock, self._listener)
            self._breakers[name] = breaker
        return breaker

    def for_job(self, spec: JobSpec) -> CircuitBreaker:
        """The breaker a job answers to: its ``breaker=`` name, else its job type."""
        return self.get(spec.breaker or spec.job_type)

    def states(self) -> dict[str, BreakerState]:
        return {name: b.state for name, b in sorted(self._breakers.items())}


class BreakerMiddleware(Middleware):
    """Gate each job on its breaker (``@job(..., breaker="smtp")``; default: its job type).

    Only failures that say something about the dependency count: errors and timeouts.
    Rejected input and permanent errors are the message's fault, not the dependency's.
    The processor also counts a payload store outage against the same breaker, before the
    chain runs (see ``Processor._load``): each job casts exactly one vote.
    """

    def __init__(self, board: BreakerBoard) -> None:
        self._board = board

    async def consume(self, ctx: JobContext, call_next: ConsumeNext) -> object:
        breaker = self._board.for_job(ctx.spec)
        key = ctx.queue  # one probe per queue (see the module docstring)
        if not breaker.allow(key):
            raise CircuitOpen(f"breaker {breaker.name!r} is {breaker.state.name.lower()}")
        try:
            result = await call_next(ctx)
        except (PermanentError, RejectedMessage):
            breaker.record_success()  # the dependency answered; the job was wrong
            raise
        except Exception:
            breaker.record_failure()
            raise
        except BaseException:  # cancelled (shutdown): not evidence either way
            breaker.abandon_probe(key)
            raise
        breaker.record_success()
        return result
