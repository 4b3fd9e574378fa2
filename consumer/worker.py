"""The worker: consume queues, run jobs, settle outcomes; start → drain → stop.

Shutdown order (also on SIGTERM): stop fetching at once, let in-flight jobs finish within
the grace period, give everything else back to the broker without spending an attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.common.clock import Clock, SystemClock
from conveyor.common.codec import DEFAULT_MAX_MESSAGE_BYTES
from conveyor.common.crash_journal import CrashJournal
from conveyor.common.errors import ConfigurationError, UnknownJobType
from conveyor.common.headers import due_at
from conveyor.common.idempotency.base import ProcessedKeyStore
from conveyor.common.jobs.outcome import Outcome
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.metrics import WorkerMetrics
from conveyor.common.middleware import Middleware
from conveyor.common.payload_store.base import PayloadStore
from conveyor.common.secrets import mask_secrets
from conveyor.common.transport.base import ConsumerHandle, Delivery, Transport
from conveyor.consumer.breaker import (
    BreakerBoard,
    BreakerConfig,
    BreakerMiddleware,
    BreakerState,
    CircuitBreaker,
)
from conveyor.consumer.middleware.crash_guard import CrashGuardMiddleware
from conveyor.consumer.middleware.idempotency import IdempotencyMiddleware
from conveyor.consumer.middleware.log_context import LogContextMiddleware
from conveyor.consumer.payloads import PayloadResolver
from conveyor.consumer.processor import Processor
from conveyor.consumer.settlement import DeferPolicy, Settlement
from conveyor.consumer.watchdog import StallWatchdog, WatchdogConfig

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
    # Seconds between queue depth samples (``Transport.stats``) for the metrics; 0: never.
    metrics_interval: float = 15.0
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    # Where the crash journal lives (``consumer.middleware.crash_guard``); None: no crash-loop
    # guard (``conveyor worker`` always has one, see CONVEYOR_STATE_DIR).
    state_dir: Path | None = None
    crash_limit: int = 3

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be ≥ 1")
        if self.prefetch is not None and self.prefetch < 1:
            raise ConfigurationError("prefetch must be ≥ 1")
        if self.grace_period < 0:
            raise ConfigurationError("grace_period must be ≥ 0")
        if self.metrics_interval < 0:
            raise ConfigurationError("metrics_interval must be ≥ 0")

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
        # What the monitor saw last: a handle that was detached by the transport and is
        # attached again (same handle) is a reconnect.
        self.seen_handle: ConsumerHandle | None = None
        self.seen_attached = False

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
        payload_store: PayloadStore | None = None,
        idempotency: ProcessedKeyStore | None = None,
        rng: random.Random | None = None,
        redact: Callable[[str], str] = mask_secrets,
    ) -> None:
        """``payload_store`` is where claim checks are fetched from (the caller closes it);
        ``payloads`` is the lower-level alternative for several stores. ``redact`` masks
        secrets in error texts before they go into retry copies, dead letters and logs
        (a ``common.secrets.Redactor``; default: URL passwords only)."""
        if payloads is not None and payload_store is not None:
            raise ConfigurationError("pass payload_store= or payloads=, not both")
        self.transport = transport
        self.registry = registry
        self.config = config or WorkerConfig()
        self.clock = clock or SystemClock()
        self.metrics = metrics or WorkerMetrics()
        self.breakers = BreakerBoard(self.config.breaker, self.clock, self._on_breaker_change)
        # Log context outermost (its fields cover every hook), the breaker innermost (it
        # must see the handler's own outcome, not another middleware's).
        # Deduplication sits just inside the caller's middlewares (tracing and metrics still
        # see a skipped duplicate) and outside the breaker (which counts real runs only).
        dedupe = [IdempotencyMiddleware(idempotency)] if idempotency is not None else []
        # The crash guard is outermost of all: a suspect waits for its exclusive run before
        # anything else happens, and its journal entry covers every other hook.
        guard = []
        if self.config.state_dir is not None:
            guard = [CrashGuardMiddleware(CrashJournal(self.config.state_dir), limit=self.config.crash_limit)]
        self.middlewares = [
            *guard, LogContextMiddleware(), *middlewares, *dedupe, BreakerMiddleware(self.breakers)
        ]
        registry.check_options(opt for m in self.middlewares for opt in m.options)
        self.metrics.know_job_types([s.job_type for s in registry.specs()])
        for spec in registry.specs():  # every breaker is exported from the start, closed
            self.metrics.breaker_state.labels(spec.breaker or spec.job_type).set(int(BreakerState.CLOSED))
        self.payloads = payloads or PayloadResolver.for_store(payload_store)
        self.processor = Processor(
            registry=registry,
            middlewares=self.middlewares,
            payloads=self.payloads,
            clock=self.clock,
            worker_id=self.config.worker_id,
            max_message_bytes=self.config.max_message_bytes,
            breakers=self.breakers,
            redact=redact,
        )
        self.settlement = Settlement(
            transport=transport,
            clock=self.clock,
            worker_id=self.config.worker_id,
            metrics=self.metrics,
            rng=rng,
            defer=self.config.defer,
            payloads=self.payloads,
            redact=redact,
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._runners = {queue: _QueueRunner(self, queue) for queue in registry.queues()}
        self._active: dict[asyncio.Task[object], Delivery] = {}
        for queue in self._runners:
            self.metrics.count_in_flight(queue, functools.partial(self._in_flight, queue))
        self._processing: set[asyncio.Task[object]] = set()
        self._timers: set[asyncio.Task[None]] = set()
        self._monitor: asyncio.Task[None] | None = None
        self.watchdog = StallWatchdog(
            self.config.watchdog,
            in_flight=lambda: [d.message_id for d in list(self._active.values())],
            on_stall=self.metrics.event_loop_stalls.inc,
        )
        self._started = False
        self._draining = False

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.watchdog.start()
        for middleware in self.middlewares:
            await middleware.startup()
        for queue, runner in self._runners.items():
            await self.transport.declare(queue)
            await runner.attach(self.config.effective_prefetch)
        self._started = True
        if self.config.metrics_interval > 0:
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())
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
                if task in self._processing:
                    task.cancel()  # _on_delivery releases its delivery on cancellation
            if still_running:
                await asyncio.wait(still_running, timeout=15.0)  # settling: bounded by confirms
        log.info("worker drained", extra={"worker_id": self.config.worker_id, "cut_short": len(pending)})

    async def stop(self, grace_period: float | None = None) -> None:
        if not self._draining:
            await self.drain(grace_period)
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.cancel()
            await asyncio.wait({monitor}, timeout=5.0)
        for middleware in reversed(self.middlewares):
            with contextlib.suppress(Exception):
                await middleware.shutdown()
        await self.watchdog.stop()
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

    def _in_flight(self, queue: str) -> int:
        """Jobs of ``queue`` being handled now (read at scrape time, possibly from another thread)."""
        return sum(1 for delivery in list(self._active.values()) if delivery.queue == queue)

    # -- deliveries ------------------------------------------------------------------
    async def _on_delivery(self, delivery: Delivery) -> None:
        runner = self._runners[delivery.queue]
        if self._draining or runner.paused:
            await self._give_back(delivery)
            return
        async with self._slots:
            if self._draining or runner.paused:
                await self._give_back(delivery)
                return
            task = asyncio.current_task()
            assert task is not None
            self._active[task] = delivery
            try:
                # Only this phase may be cut short by drain(); settling is never cancelled
                # by us (no shield, so no extra task per delivery), it is bounded by confirms.
                self._processing.add(task)
                try:
                    outcome = await self.processor.process(delivery)
                finally:
                    self._processing.discard(task)
                self._observe_start(delivery, outcome)
                await self._settle(delivery, outcome)
            except asyncio.CancelledError:
                await asyncio.shield(self._give_back(delivery))
                raise
            finally:
                self._active.pop(task, None)

    def _observe_start(self, delivery: Delivery, outcome: Outcome) -> None:
        """Time from publish (or the end of the retry delay) to the start of this attempt."""
        if outcome.envelope is None or outcome.started_at is None:
            return  # never decoded, or given back without starting (breaker open)
        due = due_at(delivery.headers) or outcome.envelope.created_at
        self.metrics.started(delivery.queue, (outcome.started_at - due).total_seconds())

    async def _settle(self, delivery: Delivery, outcome: Outcome) -> None:
        spec = None
        if outcome.envelope is not None:
            try:
                spec = self.registry.get(outcome.envelope.job_type)
            except UnknownJobType:  # settled without a retry policy
                pass
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
        self.metrics.breaker_transitions.labels(breaker.name, breaker.state.name.lower()).inc()
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

    # -- monitoring ------------------------------------------------------------------
    async def _monitor_loop(self) -> None:
        """Watch consumers every second; sample queue depths every ``metrics_interval``."""
        interval = self.config.metrics_interval
        next_sample = self.clock.monotonic()
        while True:
            self.watch_consumers()
            if self.clock.monotonic() >= next_sample:
                next_sample = self.clock.monotonic() + interval
                await self.sample_queues()
            await self.clock.sleep(min(1.0, interval))

    def watch_consumers(self) -> None:
        """Update the consumer gauges; count a consumer the transport re-attached as a reconnect.

        Polled (every second by the monitor), so a blip shorter than a poll is not counted; a
        consumer the worker itself detached and re-created (breaker) is a new handle, not a
        reconnect.
        """
        for queue, runner in self._runners.items():
            attached = runner.attached
            if runner.handle is not None and runner.handle is runner.seen_handle:
                if attached and not runner.seen_attached:
                    self.metrics.reconnects.labels(queue).inc()
            runner.seen_handle, runner.seen_attached = runner.handle, attached
            self.metrics.queue_consumers.labels(queue).set(1 if attached else 0)
            self.metrics.queue_paused.labels(queue).set(1 if runner.paused else 0)
        self.metrics.consumers_attached.set(self.attached_queues)

    async def sample_queues(self) -> None:
        for queue in self._runners:
            self.metrics.roll_window(queue)
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the monitor's own
                # cancellation when the inner call finishes in the same turn, and stop() hangs.
                async with asyncio.timeout(10.0):
                    stats = await self.transport.stats(queue)
            except Exception:  # monitoring must never take the worker down
                self.metrics.sample_errors.labels(queue).inc()
                log.debug("queue depth sample failed", exc_info=True, extra={"queue": queue})
                continue
            self.metrics.sampled(
                queue, ready=stats.ready, delayed=stats.delayed, dead_letters=stats.dead_letters,
                oldest_age=stats.oldest_age,
            )

    def _spawn_timer(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)
