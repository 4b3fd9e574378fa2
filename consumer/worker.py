"""The worker: consume queues, run jobs, settle outcomes; start → drain → stop.

Shutdown order (also on SIGTERM): stop fetching at once, let in-flight jobs finish within
the grace period, give everything else back to the broker without spending an attempt.

Breakers steer each queue's consumer through ``consumer.queue_runner`` (running, probing with
prefetch 1, paused, stopped; one lock per queue applies the latest wish). Sync handlers run in
the worker's own threads, one per slot (``consumer.threads``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.common import bounds
from conveyor.common.clock import Clock, SystemClock
from conveyor.common.codec import DEFAULT_MAX_MESSAGE_BYTES
from conveyor.common.crash_journal import CrashJournal
from conveyor.common.defaults import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CRASH_LIMIT,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_METRICS_INTERVAL,
)
from conveyor.common.errors import ConfigurationError, UnknownJobType
from conveyor.common.headers import CONFIG_HASH, WORKER_VERSION, due_timestamp
from conveyor.common.jobs.outcome import Outcome, OutcomeKind, SettleAction
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.metrics import WorkerMetrics
from conveyor.common.middleware import Middleware
from conveyor.common.secrets import mask_secrets
from conveyor.common.tasks import Slots, current_task
from conveyor.common.transport.base import Delivery, Transport
from conveyor.consumer.breaker import (
    BreakerBoard,
    BreakerConfig,
    BreakerMiddleware,
    BreakerState,
    CircuitBreaker,
)
from conveyor.consumer.hold_times import holds
from conveyor.consumer.middleware.cpu_time import CpuTimeMiddleware
from conveyor.consumer.middleware.crash_guard import CrashGuardMiddleware
from conveyor.consumer.middleware.log_context import LogContextMiddleware
from conveyor.consumer.payloads import PayloadResolver
from conveyor.consumer.processor import Processor
from conveyor.consumer.queue_runner import QueueMode, QueueRunner
from conveyor.consumer.settlement import DeferPolicy, Settlement
from conveyor.consumer.threads import HandlerThreads
from conveyor.consumer.watchdog import StallWatchdog, WatchdogConfig

if TYPE_CHECKING:  # Settings loads pydantic-settings: only the CLI needs it at run time
    from conveyor.common.idempotency.base import ProcessedKeyStore
    from conveyor.common.job_state.base import JobStateStore
    from conveyor.common.payload_store.base import PayloadStore
    from conveyor.common.settings import Settings
    from conveyor.consumer.middleware.job_state import JobStateConfig, JobStateMiddleware

__all__ = ["Worker", "WorkerConfig", "default_worker_id", "freeze_startup_heap"]

log = logging.getLogger(__name__)

# At most this long a delivery of a paused queue waits for the queue's consumer to be cancelled
# before it is settled (the cancel itself is bounded by the transport's timeouts).
_DETACH_WAIT = 15.0


def freeze_startup_heap() -> None:
    """Collect once, then keep every object alive now out of the cyclic collector's passes.

    For a worker process (``conveyor worker``), once its imports and its objects are built and
    before it consumes: the ~47,000 objects of the modules, the registry, the metrics and the
    settings live as long as the process, yet each full collection walked them all again,
    several times per drain. Frozen (``gc.freeze``), a full pass walks only what the jobs made
    (issue 18; figures in docs/benchmarks.md). The collection first frees the start-up garbage,
    which freezing would keep for good. Process-wide, so the process's owner calls it, not
    ``Worker``.
    """
    gc.collect()
    gc.freeze()


def default_worker_id(code_version: str | None = None) -> str:
    """``host:pid:random``, and ``@<code version>`` when the deploy names one (``CONVEYOR_CODE_VERSION``)."""
    version = f"@{code_version}" if code_version else ""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}{version}"


@dataclass(frozen=True)
class WorkerConfig:
    concurrency: int = DEFAULT_CONCURRENCY  # jobs at once; also the number of threads for sync handlers
    prefetch: int | None = None  # default: concurrency, so nothing waits idle in memory
    grace_period: float = DEFAULT_GRACE_PERIOD
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    worker_id: str = field(default_factory=default_worker_id)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    defer: DeferPolicy = field(default_factory=DeferPolicy)
    # Seconds between queue depth samples (``Transport.stats``) for the metrics; 0: never.
    metrics_interval: float = DEFAULT_METRICS_INTERVAL
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    # Where the crash journal lives (``consumer.middleware.crash_guard``); None: no crash-loop
    # guard (``conveyor worker`` always has one, see CONVEYOR_STATE_DIR).
    state_dir: Path | None = None
    crash_limit: int = DEFAULT_CRASH_LIMIT
    # conveyor_job_cpu_seconds measures the first run of each job type, then one in this many.
    cpu_time_every: int = 16
    # Recorded with every run (job-state attempts, dead-letter headers): see common.job_state.run_info.
    code_version: str | None = None
    config_hash: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        """The configuration ``conveyor worker`` runs with: every value from ``Settings``
        (environment, secret files, flags), whose defaults are the ones written here."""
        return cls(
            concurrency=settings.concurrency,
            prefetch=settings.prefetch,
            grace_period=settings.grace_period,
            max_message_bytes=settings.max_message_bytes,
            metrics_interval=settings.metrics_interval,
            breaker=BreakerConfig(
                consecutive_failures=settings.breaker_consecutive_failures,
                reset_timeout=settings.breaker_reset_timeout,
            ),
            watchdog=WatchdogConfig(warn_after=settings.stall_warn_after, exit_after=settings.stall_exit_after or None),
            state_dir=settings.effective_state_dir,
            crash_limit=settings.crash_limit,
            worker_id=default_worker_id(settings.code_version),
        )

    def __post_init__(self) -> None:
        bounds.count("concurrency", self.concurrency, at_most=10_000)
        if self.prefetch is not None:
            bounds.count("prefetch", self.prefetch, at_most=65_535)  # AMQP's basic.qos is 16 bits
        bounds.seconds("grace_period", self.grace_period, zero_ok=True)
        bounds.seconds("metrics_interval", self.metrics_interval, zero_ok=True)
        bounds.count("max_message_bytes", self.max_message_bytes)
        bounds.count("crash_limit", self.crash_limit)
        bounds.count("cpu_time_every", self.cpu_time_every)

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or self.concurrency


# The optional features' middlewares load their stores' modules (the job-state writer and
# spill file, the idempotency store's base): imported only when the feature is configured, so a
# plain worker does not carry them (issue 18, worker RSS; tests/unit/consumer/test_lean_imports.py).
def _idempotency_middleware(store: ProcessedKeyStore) -> Middleware:
    from conveyor.consumer.middleware.idempotency import IdempotencyMiddleware

    return IdempotencyMiddleware(store)


def _job_state_middleware() -> type[JobStateMiddleware]:
    from conveyor.consumer.middleware.job_state import JobStateMiddleware

    return JobStateMiddleware


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
        job_state: JobStateStore | None = None,
        job_state_config: JobStateConfig | None = None,
        rng: random.Random | None = None,
        redact: Callable[[str], str] = mask_secrets,
    ) -> None:
        """``payload_store`` is where claim checks are fetched from (the caller closes it);
        ``payloads`` is the lower-level alternative for several stores. ``redact`` masks
        secrets in error texts before they go into retry copies, dead letters and logs
        (a ``common.secrets.Redactor``; default: URL passwords only). ``job_state``: record
        every job's transitions there and honour cancels (``consumer.middleware.job_state``)."""
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
        dedupe = [] if idempotency is None else [_idempotency_middleware(idempotency)]
        # The crash guard is outermost of all: a suspect waits for its exclusive run before
        # anything else happens, and its journal entry covers every other hook.
        guard = []
        if self.config.state_dir is not None:
            guard = [CrashGuardMiddleware(CrashJournal(self.config.state_dir), limit=self.config.crash_limit)]
        # Job state just inside the log context: it sees every job that starts, and a cancel
        # (JobCancelled) never reaches the breaker as a failure.
        self.job_state = None if job_state is None else _job_state_middleware()(
            job_state, worker_id=self.config.worker_id, config=job_state_config,
            code_version=self.config.code_version, config_hash=self.config.config_hash,
            state_dir=self.config.state_dir,
            registry=self.metrics.registry, clock=self.clock, payload_store=payload_store, control=transport,
        )
        recorder = [self.job_state] if self.job_state is not None else []
        self.middlewares = [
            *guard, LogContextMiddleware(), *recorder, *middlewares, *dedupe,
            CpuTimeMiddleware(self.metrics, every=self.config.cpu_time_every), BreakerMiddleware(self.breakers),
        ]
        registry.check_options(opt for m in self.middlewares for opt in m.options)
        self._settled_hooks = [m.settled for m in self.middlewares if type(m).settled is not Middleware.settled]
        self.metrics.know_job_types([s.job_type for s in registry.specs()])
        for spec in registry.specs():  # every breaker is exported from the start, closed
            self.metrics.breaker_state.labels(spec.breaker or spec.job_type).set(int(BreakerState.CLOSED))
        self.payloads = payloads or PayloadResolver.for_store(payload_store)
        # Sync handlers' threads: one per slot, so a running job always has one (consumer.threads).
        self.threads = HandlerThreads(self.config.concurrency)
        self.metrics.export_function(self.metrics.sync_threads_overrun, lambda: len(self.threads.overruns()))
        self.processor = Processor(
            registry=registry,
            middlewares=self.middlewares,
            payloads=self.payloads,
            clock=self.clock,
            worker_id=self.config.worker_id,
            max_message_bytes=self.config.max_message_bytes,
            breakers=self.breakers,
            redact=redact,
            threads=self.threads,
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
            run_headers=_run_headers(self.config),
            on_dead_lettered=self._dead_lettered,
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self._slots = Slots(self.config.concurrency)
        self._runners = {
            queue: QueueRunner(queue, transport=transport, handler=self._on_delivery,
                               prefetch=self.config.effective_prefetch, clock=self.clock, spawn=self._spawn_timer)
            for queue in registry.queues()
        }
        # Which breakers each queue answers to: a queue is paused while any of them is open.
        self._queue_breakers: dict[str, set[str]] = collections.defaultdict(set)
        for spec in registry.specs():
            self._queue_breakers[spec.queue].add(spec.breaker or spec.job_type)
        self._active: dict[asyncio.Task[object], Delivery] = {}
        for queue in self._runners:
            self.metrics.count_in_flight(queue, functools.partial(self._in_flight, queue))
        self._processing: set[asyncio.Task[object]] = set()
        self._timers: set[asyncio.Task[None]] = set()
        self._settling: set[asyncio.Task[None]] = set()  # see _settle_closed
        self._monitor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one start() ran on
        self.watchdog = StallWatchdog(
            self.config.watchdog,
            in_flight=lambda: [d.message_id for d in list(self._active.values())],
            on_stall=self.metrics.event_loop_stalls.inc,
            overruns=lambda: [*self.threads.overruns(), *self.processor.overdue()],
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
        self._loop = asyncio.get_running_loop()
        self.watchdog.start()
        for middleware in self.middlewares:
            await middleware.startup()
        for queue in self._runners:
            await self.transport.declare(queue)
        # Before any consumer: a job that may outlast the broker's consumer timeout is a start-up error.
        for hold in holds(self.registry.specs(), concurrency=self.config.concurrency,
                          prefetch=self.config.effective_prefetch):
            self.transport.check_consumer_timeout(hold.queue, hold.seconds, hold.describe())
        for runner in self._runners.values():
            await runner.start()
        self._started = True
        if self.config.metrics_interval > 0:
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())
        log.info("worker started", extra={"worker_id": self.config.worker_id, "queues": list(self._runners)})

    async def drain(self, grace_period: float | None = None) -> None:
        """Stop fetching, finish in-flight work within the grace period, release the rest."""
        # NaN made asyncio.wait return at once: every job in flight was cut short.
        grace = self.config.grace_period if grace_period is None else bounds.seconds(
            "grace_period", grace_period, zero_ok=True)
        self._draining = True
        for runner in self._runners.values():
            await runner.close()
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
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=15.0)
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
        self.threads.shutdown()
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
    async def _on_delivery(self, delivery: Delivery, mode: QueueMode = QueueMode.RUNNING) -> None:
        """``mode``: that of the consumer the delivery came from."""
        runner = self._runners[delivery.queue]
        # A half-open breaker's probe runs even if another queue's probe re-opened the breaker
        # before this one got a slot: handing it back would spend a delivery (breaker module).
        probe = mode is QueueMode.PROBING
        if not self._may_run(runner, probe):
            await self._give_back(delivery, _why_not_accepting(runner))
            return
        slots = self._slots
        if not slots.try_take():  # nearly always taken at once: no await
            await slots.take()
        try:
            if not self._may_run(runner, probe):
                await self._give_back(delivery, _why_not_accepting(runner))
                return
            task = current_task(self._loop)
            assert task is not None
            self._active[task] = delivery
            try:
                # Only this phase may be cut short by drain(); settling is never cancelled
                # by us (no shield, so no extra task per delivery), it is bounded by confirms.
                self._processing.add(task)
                try:
                    outcome = await self._process(runner, delivery)
                except GeneratorExit as exc:
                    self._settle_closed(delivery, exc)
                    raise
                finally:
                    self._processing.discard(task)
                self._observe_start(delivery, outcome)
                if not runner.accepting:
                    # The queue was paused meanwhile (this job may have opened the breaker): settle
                    # once its consumer is cancelled, so the freed prefetch slot stays empty.
                    await runner.settled(_DETACH_WAIT)
                await self._settle(delivery, outcome)
            except asyncio.CancelledError:
                await asyncio.shield(self._give_back(delivery, "shutdown"))
                raise
            finally:
                self._active.pop(task, None)
        finally:
            slots.give()

    def _settle_closed(self, delivery: Delivery, exc: GeneratorExit) -> None:
        """A ``GeneratorExit`` a handler awaited (from a thread or a task it started) is thrown by
        asyncio into the delivery's task, which closes every frame of it: nothing there may await,
        and the processor's outcome is lost. The delivery is settled from a task of its own, as
        a failed attempt; left, it stayed unsettled until the connection closed."""
        assert self._loop is not None
        settling = self._loop.create_task(self._settle(delivery, self.processor.closed(delivery, exc)))
        self._settling.add(settling)  # kept referenced; drain waits for it
        settling.add_done_callback(self._settling.discard)

    def _may_run(self, runner: QueueRunner, probe: bool) -> bool:
        return not self._draining and (runner.accepting or (probe and runner.paused))

    async def _process(self, runner: QueueRunner, delivery: Delivery) -> Outcome:
        mode = runner.mode
        outcome = await self.processor.process(delivery)
        if outcome.kind is OutcomeKind.RELEASE and runner.mode is mode and runner.accepting:
            # Turned away by a breaker while we still consume the queue: handed back now, it
            # would come straight back. Hold it until the queue's mode changes (the verdict).
            await runner.mode_changed(self.config.breaker.reset_timeout)
        return outcome

    def _observe_start(self, delivery: Delivery, outcome: Outcome) -> None:
        """Time from publish (or the end of the retry delay) to the start of this attempt."""
        if outcome.envelope is None or outcome.started_at is None:
            return  # never decoded, or given back without starting (breaker open)
        due = due_timestamp(delivery.headers)
        if due is None:
            due = outcome.envelope.created_at.timestamp()
        self.metrics.started(delivery.queue, outcome.started_at.timestamp() - due)

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
            await self._give_back(delivery, "settlement_failed")
            return
        self.counts[action] += 1
        if action is SettleAction.RELEASED:
            self.metrics.delivery_released(delivery.queue, "breaker")
        if action is not SettleAction.DEAD_LETTERED:  # those ran before the ack (_dead_lettered)
            self._run_settled_hooks(outcome, action)

    def _dead_lettered(self, outcome: Outcome) -> None:
        self._run_settled_hooks(outcome, SettleAction.DEAD_LETTERED)

    def _run_settled_hooks(self, outcome: Outcome, action: SettleAction) -> None:
        for hook in self._settled_hooks:
            try:
                hook(outcome, action)
            except Exception:  # an observer must never fail a settled job
                log.exception("settled hook failed", extra={"job_type": outcome.job_type})

    async def _give_back(self, delivery: Delivery, reason: str) -> None:
        """Release ``delivery`` unstarted (counted in ``conveyor_deliveries_released_total``)."""
        if delivery.settled:
            return
        runner = self._runners[delivery.queue]
        if not runner.accepting:
            # Not while the queue still has our consumer: it would get the message right back.
            await runner.settled(_DETACH_WAIT)
        try:
            await delivery.release()
        except Exception:
            log.debug("release failed; the broker redelivers when the channel closes", exc_info=True)
            return
        self.counts[SettleAction.RELEASED] += 1
        self.metrics.delivery_released(delivery.queue, reason)

    # -- breakers --------------------------------------------------------------------
    def _on_breaker_change(self, breaker: CircuitBreaker) -> None:
        self.metrics.breaker_state.labels(breaker.name).set(int(breaker.state))
        self.metrics.breaker_transitions.labels(breaker.name, breaker.state.name.lower()).inc()
        log.warning("breaker %s", breaker.state.name.lower(), extra={"breaker": breaker.name})
        if self._draining:
            return
        if breaker.state is BreakerState.OPEN:
            self._spawn_timer(self._half_open_after(breaker, breaker.opened_at))
        # Only the wish changes here (deliveries see it at once); each queue's runner applies
        # the latest wish under its own lock, so transitions never interleave.
        for queue, names in self._queue_breakers.items():
            if breaker.name in names and queue in self._runners:
                self._runners[queue].want(self._mode_for(names))

    def _mode_for(self, breaker_names: set[str]) -> QueueMode:
        """Paused while any of the queue's breakers is open; probing while one is half-open."""
        states = {self.breakers.get(name).state for name in breaker_names}
        if BreakerState.OPEN in states:
            return QueueMode.PAUSED
        if BreakerState.HALF_OPEN in states:
            return QueueMode.PROBING  # prefetch 1: the probe takes one message, no more
        return QueueMode.RUNNING

    async def _half_open_after(self, breaker: CircuitBreaker, opened_at: float) -> None:
        await self.clock.sleep(breaker.config.reset_timeout)
        if breaker.opened_at == opened_at:  # re-opened since: that opening's timer decides
            breaker.half_open()

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

    def _spawn_timer(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)
        return task


def _run_headers(config: WorkerConfig) -> dict[str, str]:
    pairs = ((WORKER_VERSION, config.code_version), (CONFIG_HASH, config.config_hash))
    return {name: value for name, value in pairs if value}


def _why_not_accepting(runner: QueueRunner) -> str:
    return "breaker" if runner.paused else "shutdown"
