"""Prometheus metrics, on a registry owned by each worker or producer (no global state).

Labels are bounded sets: job types registered with the worker (anything else is
``unknown``), closed reason codes, queue names from configuration, breaker names from job
options. Never job ids or error messages, which would create a series per job.

The service-level indicators, and the series that carry them (names as exported):

==========================  ================================================================
success rate                ``conveyor_jobs_succeeded_total`` / ``conveyor_jobs_dead_lettered_total``
                            (terminal outcomes); ``conveyor_jobs_failed_total`` counts attempts
duration percentiles        ``conveyor_job_duration_seconds`` (handler time)
cost per run                ``conveyor_job_cpu_seconds{job_type}``: process CPU while the handler ran
                            (exact at concurrency 1; with jobs side by side it also counts theirs)
process resources           ``process_resident_memory_bytes``, ``process_open_fds``,
                            ``process_cpu_seconds_total`` (prometheus_client's ProcessCollector)
queue depth                 ``conveyor_queue_depth{queue, state="ready|delayed|dead_letter"}``,
                            sampled by every worker every ``metrics_interval`` seconds
time from publish to start  ``conveyor_job_start_delay_seconds{queue}``: from the moment a message
                            became due (publish, or the end of its retry delay) to the start of
                            its attempt. Needs reasonably synced clocks between hosts.
oldest message (estimate)   ``conveyor_queue_max_start_delay_seconds{queue}``: the longest start
                            delay among jobs *started* in the last one or two sampling
                            intervals. It does not grow while nothing starts: pair it with
                            ``conveyor_queue_depth`` and ``conveyor_queue_consumers`` (the
                            alerts do). ``conveyor_queue_oldest_age_seconds`` is exported only
                            by transports that know the exact age (the in-memory broker).
retries                     ``conveyor_jobs_retried_total{job_type, reason}``,
                            ``conveyor_job_attempts`` (attempts a job took, at its end)
dead-letter rate            ``conveyor_jobs_dead_lettered_total{job_type, reason}``
in flight                   ``conveyor_jobs_in_flight{queue}``
hand-backs                  ``conveyor_deliveries_released_total{queue, reason="breaker|shutdown|settlement_failed"}``:
                            deliveries given back to the broker unstarted. No attempt is spent, but
                            RabbitMQ 4 counts each one towards the queue's delivery limit
sync handler threads        ``conveyor_sync_threads_overrun``: threads of sync handlers still running
                            past their job's time limit (each keeps its slot and message until it returns)
breakers                    ``conveyor_breaker_state{breaker}``,
                            ``conveyor_breaker_transitions_total{breaker, state}``
publish confirm latency     ``conveyor_publish_confirm_seconds{kind="job|retry|defer|dead_letter"}``,
                            ``conveyor_publish_failures_total{kind, error}``
loop stalls                 ``conveyor_event_loop_stalls_total`` (blocking code in an async handler)
consumers, reconnects       ``conveyor_queue_consumers{queue}`` (this worker: 0/1), ``conveyor_queue_paused{queue}``,
                            ``conveyor_consumers_attached``, ``conveyor_consumer_reconnects_total{queue}``
==========================  ================================================================

Under ``conveyor worker --processes N`` every worker process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` and the supervisor serves their aggregate: counters and histograms
are summed (dead processes' counts included), each gauge has a deliberate multiprocess mode:
in flight, consumers and sync threads overrun are summed over live processes (``livesum``),
breaker state, paused, start delay and oldest age take the worst live value (``livemax``), and
queue depth, which every process samples from the same broker queue, the most recent sample
(``livemostrecent``).
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.values import MutexValue

from conveyor.common.jobs.outcome import SettleAction

if TYPE_CHECKING:
    from conveyor.common.jobs.outcome import Outcome

__all__ = ["PUBLISH_KINDS", "QUEUE_STATES", "WorkerMetrics"]

UNKNOWN = "unknown"
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
_CONFIRM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 7, 10, 15, 20, 50)
PUBLISH_KINDS = frozenset({"job", "retry", "defer", "dead_letter", "replay"})
QUEUE_STATES = ("ready", "delayed", "dead_letter")
# Publish errors are labelled by exception class, but only from this closed set.
_PUBLISH_ERRORS = frozenset({
    "PublishNacked", "PublishNotConfirmed", "PublishOutcomeUnknown", "TransportError", "MessageTooLarge",
    "TimeoutError",
})


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.published = Counter("conveyor_jobs_published", "Jobs published (confirmed)", ["job_type"], registry=r)
        self.succeeded = Counter("conveyor_jobs_succeeded", "Jobs that succeeded", ["job_type"], registry=r)
        self.failed = Counter(
            "conveyor_jobs_failed", "Failed attempts, by reason", ["job_type", "reason"], registry=r
        )
        self.retried = Counter(
            "conveyor_jobs_retried", "Retry copies published, by the reason of the failed attempt",
            ["job_type", "reason"], registry=r,
        )
        self.deferred = Counter("conveyor_jobs_deferred", "Jobs deferred (schema too new)", ["job_type"], registry=r)
        self.released = Counter("conveyor_jobs_released", "Deliveries given back untouched", ["job_type"], registry=r)
        self.dead_lettered = Counter(
            "conveyor_jobs_dead_lettered", "Jobs dead-lettered, by reason", ["job_type", "reason"], registry=r
        )
        self.duration = Histogram(
            "conveyor_job_duration_seconds", "Handler duration", ["job_type"], buckets=_DURATION_BUCKETS, registry=r
        )
        self.in_flight = Gauge("conveyor_jobs_in_flight", "Jobs being handled now", ["queue"], registry=r,
                              multiprocess_mode="livesum")
        self.breaker_state = Gauge(
            "conveyor_breaker_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)", ["breaker"], registry=r,
            multiprocess_mode="livemax",
        )
        self.consumers_attached = Gauge(
            "conveyor_consumers_attached", "Queues with an attached consumer", registry=r, multiprocess_mode="livesum"
        )
        self.attempts = Histogram(
            "conveyor_job_attempts", "Attempts a job took, observed when it succeeded or was dead-lettered",
            ["job_type", "outcome"], buckets=_ATTEMPT_BUCKETS, registry=r,
        )
        self.start_delay = Histogram(
            "conveyor_job_start_delay_seconds",
            "Time from when a message became due (publish or end of its retry delay) to the start of its attempt",
            ["queue"], buckets=_DELAY_BUCKETS, registry=r,
        )
        self.max_start_delay = Gauge(
            "conveyor_queue_max_start_delay_seconds",
            "Longest start delay among jobs started in the last one or two sampling intervals",
            ["queue"], registry=r, multiprocess_mode="livemax",
        )
        self.queue_depth = Gauge(
            "conveyor_queue_depth", "Messages in the broker by state (sampled)", ["queue", "state"], registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.oldest_age = Gauge(
            "conveyor_queue_oldest_age_seconds",
            "Age of the oldest ready message (only from transports that know it exactly)", ["queue"], registry=r,
            multiprocess_mode="livemax",
        )
        self.queue_consumers = Gauge(
            "conveyor_queue_consumers", "Whether this worker has a consumer attached to the queue (0/1)",
            ["queue"], registry=r, multiprocess_mode="livesum",
        )
        self.queue_paused = Gauge(
            "conveyor_queue_paused", "Whether this worker paused the queue because a breaker is open (0/1)",
            ["queue"], registry=r, multiprocess_mode="livemax",
        )
        self.reconnects = Counter(
            "conveyor_consumer_reconnects", "Consumers re-attached by the transport after losing the broker",
            ["queue"], registry=r,
        )
        self.sample_errors = Counter(
            "conveyor_queue_sample_errors", "Failed queue depth samples", ["queue"], registry=r
        )
        self.breaker_transitions = Counter(
            "conveyor_breaker_transitions", "Circuit breaker state changes, by the state entered",
            ["breaker", "state"], registry=r,
        )
        self.publish_confirm = Histogram(
            "conveyor_publish_confirm_seconds", "Time from publish to the broker's confirm",
            ["kind"], buckets=_CONFIRM_BUCKETS, registry=r,
        )
        self.publish_failures = Counter(
            "conveyor_publish_failures", "Publishes that were not confirmed, by error", ["kind", "error"], registry=r
        )
        self.deliveries_released = Counter(
            "conveyor_deliveries_released", "Deliveries given back to the broker unstarted, by queue and why",
            ["queue", "reason"], registry=r,
        )
        self.sync_threads_overrun = Gauge(
            "conveyor_sync_threads_overrun",
            "Sync handler threads still running past their job's time limit (each keeps its slot)", registry=r,
            multiprocess_mode="livesum",
        )
        self.event_loop_stalls = Counter(
            "conveyor_event_loop_stalls", "Times the event loop was blocked longer than the watchdog allows",
            registry=r,
        )
        self.job_cpu = Histogram(
            "conveyor_job_cpu_seconds",
            "Process CPU time while a job's handler ran (exact at concurrency 1; one run in N is measured)",
            ["job_type"], buckets=_DURATION_BUCKETS, registry=r,
        )
        with contextlib.suppress(ValueError):  # a registry that has them already (the global default)
            ProcessCollector(registry=r)  # RSS, open fds, CPU seconds of this process
        self._known: set[str] = set()
        self._functions: list[tuple[Any, Callable[[], float]]] = []
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._updaters: dict[tuple[int, tuple[str, ...]], Callable[[float], None]] = {}
        # Per label (bounded: registered job types and "unknown"): a success's three updates.
        self._succeeded_by_label: dict[str, tuple[Callable[[float], None], ...]] = {}
        self._retried_by_label: dict[tuple[str, str], tuple[Callable[[float], None], ...]] = {}
        self._confirm_by_kind: dict[str, Callable[[float], None]] = {}
        self._start_delay_by_queue: dict[str, Callable[[float], None]] = {}  # bound once per queue
        self._window_max: dict[str, float] = {}
        self._previous_max: dict[str, float] = {}

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, cached: labels() takes a lock and builds a key on
        every call, which shows in the per-job hot path; label sets are bounded anyway."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def adder(self, metric: Any, *values: str) -> Callable[[float], None]:
        """``inc`` of a counter or gauge child (a gauge's ``dec`` is adding a negative amount)."""
        return self._updater(_adder, metric, values)

    def observer(self, metric: Any, *values: str) -> Callable[[float], None]:
        """``observe`` of a histogram child."""
        return self._updater(_observer, metric, values)

    def _updater(
        self, make: Callable[[Any], Callable[[float], None]], metric: Any, values: tuple[str, ...]
    ) -> Callable[[float], None]:
        # One cache for both kinds: a metric is either a histogram or not, so keys never clash.
        key = (id(metric), values)
        update = self._updaters.get(key)
        if update is None:
            update = self._updaters[key] = make(self.child(metric, *values))
        return update

    def know_job_types(self, job_types: list[str]) -> None:
        self._known.update(job_types)

    def label(self, job_type: str | None) -> str:
        return job_type if job_type in self._known else UNKNOWN

    def settled(self, job_type: str | None, action: SettleAction, outcome: Outcome) -> None:
        label = self.label(job_type)
        if action is SettleAction.SUCCEEDED and not outcome.error_type and outcome.envelope is not None:
            # Nearly every job: one lookup for its updates, bound once per label.
            bound = self._succeeded_by_label.get(label)
            if bound is None:
                bound = self._succeeded_by_label[label] = (
                    self.observer(self.duration, label),
                    self.adder(self.succeeded, label),
                    self.observer(self.attempts, label, "succeeded"),
                )
            duration, succeeded, attempts = bound
            if outcome.duration:
                duration(outcome.duration)
            succeeded(1)
            attempts(outcome.envelope.attempt)
            return
        if action is SettleAction.RETRIED and outcome.duration and outcome.error_type and outcome.reason:
            # Every retried job: its three updates bound once per label and reason (the reasons a
            # retry has are Conveyor's few), as a success's are.
            key = (label, outcome.reason)
            retried = self._retried_by_label.get(key)
            if retried is None:
                retried = self._retried_by_label[key] = (
                    self.observer(self.duration, label),
                    self.adder(self.failed, label, outcome.reason),
                    self.adder(self.retried, label, outcome.reason),
                )
            duration, failed, retried_one = retried
            duration(outcome.duration)
            failed(1)
            retried_one(1)
            return
        if outcome.duration:
            self.observer(self.duration, label)(outcome.duration)
        if outcome.error_type and outcome.reason:
            self.adder(self.failed, label, outcome.reason)(1)
        match action:
            case SettleAction.SUCCEEDED:
                self.adder(self.succeeded, label)(1)
                if outcome.envelope is not None:
                    self.observer(self.attempts, label, "succeeded")(outcome.envelope.attempt)
            case SettleAction.RETRIED:
                self.adder(self.retried, label, outcome.reason or UNKNOWN)(1)
            case SettleAction.DEFERRED:
                self.adder(self.deferred, label)(1)
            case SettleAction.RELEASED:
                self.adder(self.released, label)(1)

    def dead_letter(self, job_type: str | None, reason: str, attempt: int | None = None) -> None:
        label = self.label(job_type)
        self.adder(self.dead_lettered, label, reason)(1)
        if attempt is not None:
            self.observer(self.attempts, label, "dead_lettered")(attempt)

    def delivery_released(self, queue: str, reason: str) -> None:
        """A delivery went back to the broker unstarted (``reason``: breaker, shutdown, settlement_failed)."""
        self.adder(self.deliveries_released, queue, reason)(1)

    # -- publishing ------------------------------------------------------------------------
    def confirmed(self, kind: str, seconds: float) -> None:
        observe = self._confirm_by_kind.get(kind)  # bound once per kind: one per retried job
        if observe is None:
            observe = self.observer(self.publish_confirm, _kind(kind))
            if kind in PUBLISH_KINDS:  # the few kinds there are; anything else is "unknown", unkept
                self._confirm_by_kind[kind] = observe
        observe(max(0.0, seconds))

    def publish_failed(self, kind: str, error: BaseException) -> None:
        name = type(error).__name__
        self.adder(self.publish_failures, _kind(kind), name if name in _PUBLISH_ERRORS else "other")(1)

    # -- queues ----------------------------------------------------------------------------
    def count_in_flight(self, queue: str, count: Callable[[], int]) -> None:
        """Export ``count()`` as the queue's in-flight gauge, read at scrape time (no per-job update)."""
        self.export_function(self.child(self.in_flight, queue), count)

    def export_function(self, gauge: Any, read: Callable[[], float]) -> None:
        """``gauge.set_function(read)``, also remembered for ``refresh``: in multiprocess mode the
        scrape reads the processes' files, not the function, so a worker process under
        ``conveyor worker --processes N`` copies the values there every second."""
        gauge.set_function(read)
        self._functions.append((gauge, read))

    def refresh(self) -> None:
        """Write every function gauge's current value (multiprocess mode; see ``export_function``)."""
        for gauge, read in self._functions:
            gauge.set(read())

    def started(self, queue: str, delay: float) -> None:
        """A job started ``delay`` seconds after it became due."""
        delay = max(0.0, delay)
        observe = self._start_delay_by_queue.get(queue)
        if observe is None:  # every job: one lookup, no key built
            observe = self._start_delay_by_queue[queue] = self.observer(self.start_delay, queue)
        observe(delay)
        if delay > self._window_max.get(queue, -1.0):
            self._window_max[queue] = delay
            self.child(self.max_start_delay, queue).set(max(delay, self._previous_max.get(queue, 0.0)))

    def roll_window(self, queue: str) -> None:
        """Start a new sampling interval: the gauge keeps the max of the last two intervals."""
        previous = self._window_max.pop(queue, 0.0)
        self._previous_max[queue] = previous
        self.child(self.max_start_delay, queue).set(previous)

    def sampled(
        self,
        queue: str,
        *,
        ready: int | None,
        delayed: int | None,
        dead_letters: int | None,
        oldest_age: float | None = None,
    ) -> None:
        for state, value in zip(QUEUE_STATES, (ready, delayed, dead_letters), strict=True):
            if value is not None:
                self.child(self.queue_depth, queue, state).set(value)
        if oldest_age is not None:
            self.child(self.oldest_age, queue).set(oldest_age)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _kind(kind: str) -> str:
    return kind if kind in PUBLISH_KINDS else UNKNOWN


# prometheus-client's inc() and observe() check on every call that the metric has its labels
# (ours always do: cached children), observe() walks the buckets in Python, and every update
# takes a threading.Lock; per job that added up to several microseconds. These do the same
# updates on the child's values directly. Without the lock: a WorkerMetrics is updated only on
# its event loop's thread (the watchdog thread uses the public inc() of its own counter), and a
# scrape reads each float whole. Other value classes (multiprocess mode) keep their own inc().
def _add_to(value: Any) -> Callable[[float], None]:
    if type(value) is not MutexValue:
        return value.inc  # type: ignore[no-any-return]  # prometheus-client's value classes are untyped

    def add(amount: float) -> None:
        value._value += amount

    return add


def _adder(child: Any) -> Callable[[float], None]:
    value = getattr(child, "_value", None)
    return child.inc if value is None else _add_to(value)


def _observer(child: Any) -> Callable[[float], None]:
    total, buckets, bounds = (getattr(child, name, None) for name in ("_sum", "_buckets", "_upper_bounds"))
    if total is None or not buckets or not bounds or len(buckets) != len(bounds) or bounds[-1] != float("inf"):
        return child.observe  # type: ignore[no-any-return]  # a metric child, passed untyped (Any)
    limits = tuple(bounds)
    if type(total) is MutexValue and all(type(bucket) is MutexValue for bucket in buckets):
        values = tuple(buckets)

        def observe_values(amount: float) -> None:  # _add_to's updates, without two calls each
            total._value += amount
            values[bisect_left(limits, amount)]._value += 1

        return observe_values
    add_total, adds = _add_to(total), [_add_to(bucket) for bucket in buckets]

    def observe(amount: float) -> None:
        add_total(amount)
        adds[bisect_left(limits, amount)](1)  # the first bucket whose bound is ≥ amount, as observe()

    return observe
