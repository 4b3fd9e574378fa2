"""The worker: consume queues, run jobs, settle outcomes; start → drain → stop.

Shutdown order (also on SIGTERM): stop fetching at once, let in-flight jobs finish within
the grace period, give everything else back to the broker without spending an attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.clock import Clock, SystemClock
from common.codec import DEFAULT_MAX_MESSAGE_BYTES
from common.errors import ConfigurationError
from common.metrics import WorkerMetrics
from common.middleware import Middleware
from common.transport.base import ConsumerHandle, Delivery, Transport
from consumer.breaker import BreakerBoard, BreakerConfig, BreakerMiddleware, BreakerState, CircuitBreaker
from consumer.log_context import LogContextMiddleware
from consumer.outcome import Outcome
from consumer.payloads import PayloadResolver
from consumer.processor import Processor
from consumer.registry import JobRegistry
from consumer.settlement import DeferPolicy, Settlement

__all__ = ["Worker", "WorkerConfig", "default_worker_id"]

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class WorkerConfig:
    concurrency: int = 16
    prefetch: int | None = None  # default: concurrency, so nothing waits idle in memory
    grace_period: float = 30.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    worker_id: str = field(default_factory=default_worker_id)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    defer: DeferPolicy = field(default_factory=DeferPolicy)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be ≥ 1")
        if self.prefetch is not None and self.prefetch < 1:
            raise ConfigurationError("prefetch must be ≥ 1")
        if self.grace_period < 0:
            raise ConfigurationError("grace_period must be ≥ 0")

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or self.concurrency


class _QueueRunner:
    """One queue's consumer: attach, pause (breaker open), probe (half-open), detach."""

    def __init__(self, worker: Worker, queue: str) -> None:
        self.queue = queue
        self._worker = worker
        self.handle: ConsumerHandle | None = None
        self.paused = False

    @property
    def attached(self) -> bool:
        return self.handle is not None and self.handle.attached

    async def attach(self, prefetch: int) -> None:
        await self.detach()
        self.handle = await self._worker.transport.consume(self.queue, self._worker._on_delivery, prefetch=prefetch)

    async def detach(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            with contextlib.suppress(Exception):  # a dead connection has no consumer to cancel
                await handle.cancel()


class Worker:
    def __init__(
        self,
        transport: Transport,
        registry: JobRegistry,
        *,
        config: WorkerConfig | None = None,
        middlewares: Sequence[Middleware] = (),
        clock: Clock | None = None,
        metrics: WorkerMetrics | None = None,
        payloads: PayloadResolver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.transport = transport
        self.registry = registry
        self.config = config or WorkerConfig()
        self.clock = clock or SystemClock()
        self.metrics = metrics or WorkerMetrics()
        self.breakers = BreakerBoard(self.config.breaker, self.clock, self._on_breaker_change)
        # Log context outermost (its fields cover every hook), the breaker innermost (it
        # must see the handler's own outcome, not another middleware's).
        self.middlewares = [LogContextMiddleware(), *middlewares, BreakerMiddleware(self.breakers)]
        registry.check_options(opt for m in self.middlewares for opt in m.options)
        self.metrics.know_job_types([s.job_type for s in registry.specs()])
        self.processor = Processor(
            registry=registry,
            middlewares=self.middlewares,
            payloads=payloads or PayloadResolver(),
            clock=self.clock,
            worker_id=self.config.worker_id,
            max_message_bytes=self.config.max_message_bytes,
        )
        self.settlement = Settlement(
            transport=transport,
            clock=self.clock,
            worker_id=self.config.worker_id,
            metrics=self.metrics,
            rng=rng,
            defer=self.config.defer,
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._runners = {queue: _QueueRunner(self, queue) for queue in registry.queues()}
        self._active: dict[asyncio.Task[object], Delivery] = {}
        self._timers: set[asyncio.Task[None]] = set()
        self._started = False
        self._draining = False

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        for middleware in self.middlewares:
            await middleware.startup()
        for queue, runner in self._runners.items():
            await self.transport.declare(queue)
            await runner.attach(self.config.effective_prefetch)
        self._started = True
        log.info("worker started", extra={"worker_id": self.config.worker_id, "queues": list(self._runners)})

    async def drain(self, grace_period: float | None = None) -> None:
        """Stop fetching, finish in-flight work within the grace period, release the rest."""
        grace = self.config.grace_period if grace_period is None else grace_period
        self._draining = True
        for runner in self._runners.values():
            await runner.detach()
        for timer in self._timers:
            timer.cancel()
        pending = set(self._active)
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=grace)
            for task in still_running:
                task.cancel()  # _on_delivery releases its delivery on cancellation
            if still_running:
                await asyncio.wait(still_running, timeout=5.0)
        log.info("worker drained", extra={"worker_id": self.config.worker_id, "cut_short": len(pending)})

    async def stop(self, grace_period: float | None = None) -> None:
        if not self._draining:
            await self.drain(grace_period)
        for middleware in reversed(self.middlewares):
            with contextlib.suppress(Exception):
                await middleware.shutdown()
        self._started = False

    # -- state -----------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Ready to take work: started, not draining, every unpaused queue has a consumer."""
        if not self._started or self._draining:
            return False
        return all(r.attached for r in self._runners.values() if not r.paused)

    @property
    def attached_queues(self) -> int:
        return sum(1 for r in self._runners.values() if r.attached)

    @property
    def in_flight(self) -> int:
        return len(self._active)

    # -- deliveries ------------------------------------------------------------------
    async def _on_delivery(self, delivery: Delivery) -> None:
        if self._draining or self._runners[delivery.queue].paused:
            await self._give_back(delivery)
            return
        async with self._slots:
            if self._draining or self._runners[delivery.queue].paused:
                await self._give_back(delivery)
                return
            task = asyncio.current_task()
            assert task is not None
            self._active[task] = delivery
            gauge = self.metrics.in_flight.labels(delivery.queue)
            gauge.inc()
            try:
                outcome = await self.processor.process(delivery)
                await asyncio.shield(self._settle(delivery, outcome))
            except asyncio.CancelledError:
                await asyncio.shield(self._give_back(delivery))
                raise
            finally:
                gauge.dec()
                self._active.pop(task, None)

    async def _settle(self, delivery: Delivery, outcome: Outcome) -> None:
        spec = None
        if outcome.envelope is not None:
            with contextlib.suppress(Exception):
                spec = self.registry.get(outcome.envelope.job_type)
        try:
            action = await self.settlement.settle(delivery, outcome, spec.retry if spec else None)
        except Exception:
            # Settle once, last, and only after copies are confirmed: if that failed the
            # broker must redeliver, so give the message back (or let the dead channel do it).
            log.exception("settlement failed; message returned to the broker", extra={"queue": delivery.queue})
            await self._give_back(delivery)
            return
        self.counts[action] += 1

    async def _give_back(self, delivery: Delivery) -> None:
        if delivery.settled:
            return
        try:
            await delivery.release()
            self.counts["released"] += 1
        except Exception:
            log.debug("release failed; the broker redelivers when the channel closes", exc_info=True)

    # -- breakers --------------------------------------------------------------------
    def _on_breaker_change(self, breaker: CircuitBreaker) -> None:
        self.metrics.breaker_state.labels(breaker.name).set(int(breaker.state))
        log.warning("breaker %s", breaker.state.name.lower(), extra={"breaker": breaker.name})
        if self._draining:
            return
        queues = {s.queue for s in self.registry.specs() if (s.breaker or s.job_type) == breaker.name}
        self._spawn_timer(self._apply_breaker(breaker, queues))

    async def _apply_breaker(self, breaker: CircuitBreaker, queues: set[str]) -> None:
        runners = [self._runners[q] for q in queues if q in self._runners]
        if breaker.state is BreakerState.OPEN:
            for runner in runners:
                runner.paused = True
                await runner.detach()
            await self.clock.sleep(breaker.config.reset_timeout)
            breaker.half_open()
        elif breaker.state is BreakerState.HALF_OPEN:
            for runner in runners:
                runner.paused = False
                await runner.attach(1)  # one delivery at a time: the probe
        else:
            for runner in runners:
                runner.paused = False
                await runner.attach(self.config.effective_prefetch)

    def _spawn_timer(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)
