"""The SLI series a known workload produces, and that job ids never become labels."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.clock import FakeClock
from conveyor.common.errors import PermanentError, RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.base import ConsumerHandle
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.breaker import BreakerConfig
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: bytes, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


async def spin(clock: FakeClock, seconds: float, step: float = 0.5) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)
        for _ in range(20):
            await asyncio.sleep(0)


async def test_a_known_workload_produces_every_sli_series() -> None:
    clock = FakeClock()
    broker = MemoryBroker(clock)
    jobs = JobRegistry()

    @jobs.job("t.ok", queue="work")
    async def ok(payload: Job, ctx: JobContext) -> None:
        return None

    @jobs.job("t.flaky", queue="work", retry=RetryPolicy(max_attempts=3, base=2, factor=1, jitter=0))
    async def flaky(payload: Job, ctx: JobContext) -> None:
        if ctx.attempt < 2:
            raise RetryableError("try again")

    @jobs.job("t.bad", queue="work", breaker="bad-api")
    async def bad(payload: Job, ctx: JobContext) -> None:
        raise PermanentError("never works")

    @jobs.job("t.down", queue="deps", retry=RetryPolicy(max_attempts=2, base=1, factor=1, jitter=0), breaker="down")
    async def down(payload: Job, ctx: JobContext) -> None:
        raise RetryableError("dependency down")

    config = WorkerConfig(metrics_interval=5, breaker=BreakerConfig(consecutive_failures=2, reset_timeout=1000))
    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs, clock=clock) as producer:
        worker = Worker(transport, jobs, config=config, clock=clock, rng=random.Random(3))
        async with worker:
            for i in range(5):
                await producer.publish("t.ok", Job(n=i))
            await producer.publish("t.flaky", Job(n=0))
            await producer.publish("t.bad", Job(n=0))
            await producer.publish("t.down", Job(n=0))
            await spin(clock, 4)  # the flaky retry (2 s) and the down retry (1 s) ran
            # Three jobs that wait on the broker (delayed) when the next sample is taken.
            for i in range(3):
                await producer.publish("t.ok", Job(n=100 + i), delay=60)
            await spin(clock, 6)  # one sample interval passed
            text = worker.metrics.render()
            producer_text = producer.metrics.render()

    assert value(text, "conveyor_jobs_succeeded_total", job_type="t.ok") == 5
    assert value(text, "conveyor_jobs_succeeded_total", job_type="t.flaky") == 1
    assert value(text, "conveyor_jobs_failed_total", job_type="t.flaky", reason="error") == 1
    assert value(text, "conveyor_jobs_failed_total", job_type="t.bad", reason="permanent") == 1
    assert value(text, "conveyor_jobs_retried_total", job_type="t.flaky", reason="error") == 1
    assert value(text, "conveyor_jobs_dead_lettered_total", job_type="t.bad", reason="permanent") == 1
    assert value(text, "conveyor_jobs_dead_lettered_total", job_type="t.down", reason="exhausted") == 1
    # Attempts per job, at its end: 5 × 1 and 1 × 2 succeeded; 1 and 2 for the dead letters.
    assert value(text, "conveyor_job_attempts_count", job_type="t.ok", outcome="succeeded") == 5
    assert value(text, "conveyor_job_attempts_sum", job_type="t.flaky", outcome="succeeded") == 2
    assert value(text, "conveyor_job_attempts_sum", job_type="t.down", outcome="dead_lettered") == 2
    # Start delay: from due time to start. The retried attempts started on time (≤ 0.5 s step).
    assert value(text, "conveyor_job_start_delay_seconds_count", queue="work") == 8
    assert value(text, "conveyor_job_start_delay_seconds_bucket", queue="work", le="0.5") == 8
    assert value(text, "conveyor_job_start_delay_seconds_count", queue="deps") == 2
    # Depth by state, sampled: the three delayed jobs wait on the broker; a dead letter each.
    assert value(text, "conveyor_queue_depth", queue="work", state="ready") == 0
    assert value(text, "conveyor_queue_depth", queue="work", state="delayed") == 3
    assert value(text, "conveyor_queue_depth", queue="work", state="dead_letter") == 1
    assert value(text, "conveyor_queue_depth", queue="deps", state="dead_letter") == 1
    assert value(text, "conveyor_queue_oldest_age_seconds", queue="work") == 0
    assert value(text, "conveyor_queue_consumers", queue="work") == 1
    assert value(text, "conveyor_queue_consumers", queue="deps") == 0  # paused: its breaker is open
    assert value(text, "conveyor_jobs_in_flight", queue="work") == 0
    # The "down" breaker opened after its two failures and stays open (reset 1000 s).
    assert value(text, "conveyor_breaker_state", breaker="down") == 2
    assert value(text, "conveyor_breaker_transitions_total", breaker="down", state="open") == 1
    # Publish confirms: settlement's copies (2 retries, 2 dead letters), the producer's jobs.
    assert value(text, "conveyor_publish_confirm_seconds_count", kind="retry") == 2
    assert value(text, "conveyor_publish_confirm_seconds_count", kind="dead_letter") == 2
    assert value(producer_text, "conveyor_publish_confirm_seconds_count", kind="job") == 11
    assert value(producer_text, "conveyor_jobs_published_total", job_type="t.ok") == 8


async def test_ready_depth_oldest_age_and_the_max_start_delay_window() -> None:
    clock = FakeClock()
    broker = MemoryBroker(clock)
    release = asyncio.Event()
    jobs = JobRegistry()

    @jobs.job("t.slow")
    async def slow(payload: Job, ctx: JobContext) -> None:
        await release.wait()

    transport = MemoryTransport(broker)
    await transport.connect()
    config = WorkerConfig(concurrency=1, prefetch=1, metrics_interval=10)
    async with Producer.for_registry(MemoryTransport(broker), jobs, clock=clock) as producer:
        async with Worker(transport, jobs, config=config, clock=clock) as worker:
            for i in range(3):
                await producer.publish("t.slow", Job(n=i))
            await spin(clock, 12)  # job 0 runs; 1 and 2 wait for 12 s
            text = worker.metrics.render()
            assert value(text, "conveyor_queue_depth", queue=DEFAULT_QUEUE, state="ready") == 2
            assert 10 <= value(text, "conveyor_queue_oldest_age_seconds", queue=DEFAULT_QUEUE) <= 11  # sampled at ~10 s
            assert value(text, "conveyor_jobs_in_flight", queue=DEFAULT_QUEUE) == 1
            release.set()
            await spin(clock, 0.5)
            text = worker.metrics.render()
            # Jobs 1 and 2 started 12.5 s after they were published.
            assert value(text, "conveyor_queue_max_start_delay_seconds", queue=DEFAULT_QUEUE) == 12.5
            await spin(clock, 20)  # two quiet sampling intervals: the window forgets
            assert value(worker.metrics.render(), "conveyor_queue_max_start_delay_seconds", queue=DEFAULT_QUEUE) == 0


class _FlakyHandle(ConsumerHandle):
    def __init__(self) -> None:
        self.up = True

    @property
    def attached(self) -> bool:
        return self.up

    async def cancel(self) -> None:
        self.up = False


async def test_a_consumer_reattached_by_the_transport_counts_as_a_reconnect() -> None:
    jobs = JobRegistry()

    @jobs.job("t.any")
    async def handler(payload: Job, ctx: JobContext) -> None:
        return None

    transport = MemoryTransport(MemoryBroker())
    await transport.connect()
    worker = Worker(transport, jobs, config=WorkerConfig(metrics_interval=0))
    await worker.start()
    handle = _FlakyHandle()
    worker._runners[DEFAULT_QUEUE].handle = handle
    worker.watch_consumers()
    handle.up = False  # connection lost
    worker.watch_consumers()
    assert value(worker.metrics.render(), "conveyor_queue_consumers", queue=DEFAULT_QUEUE) == 0
    handle.up = True  # the transport re-attached the same consumer
    worker.watch_consumers()
    text = worker.metrics.render()
    assert value(text, "conveyor_consumer_reconnects_total", queue=DEFAULT_QUEUE) == 1
    assert value(text, "conveyor_queue_consumers", queue=DEFAULT_QUEUE) == 1
    await worker.stop()


async def test_ten_thousand_distinct_job_ids_add_no_series() -> None:
    broker = MemoryBroker()
    jobs = JobRegistry()

    @jobs.job("t.many")
    async def handler(payload: Job, ctx: JobContext) -> None:
        if payload.n % 10 == 0:
            raise PermanentError(f"job {payload.n} is bad")  # error text must not become a label

    transport = MemoryTransport(broker)
    await transport.connect()
    config = WorkerConfig(concurrency=64, metrics_interval=0)
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, Worker(
        transport, jobs, config=config
    ) as worker:

        async def run(start: int, count: int) -> None:
            for i in range(start, start + count):
                await producer.publish("t.many", Job(n=i), idempotency_key=f"key-{i}")
            await broker.join(DEFAULT_QUEUE)
            await worker.sample_queues()

        await run(0, 20)
        before = set(samples(worker.metrics.render())) | set(samples(producer.metrics.render()))
        await run(20, 10_000)
        after = set(samples(worker.metrics.render())) | set(samples(producer.metrics.render()))
    assert after == before, f"new series: {sorted(after - before)[:5]}"
    assert value(worker.metrics.render(), "conveyor_jobs_succeeded_total", job_type="t.many") == 9018


def _reference_settled(metrics: object, job_type: str | None, action: object, outcome: object) -> None:
    """The generic updates ``WorkerMetrics.settled`` makes for anything but a plain success
    (what it did for every retry before the retry's updates were bound once per label)."""
    from conveyor.common.jobs.outcome import SettleAction
    from conveyor.common.metrics import UNKNOWN

    m: Any = metrics
    o: Any = outcome
    label = m.label(job_type)
    if o.duration:
        m.observer(m.duration, label)(o.duration)
    if o.error_type and o.reason:
        m.adder(m.failed, label, o.reason)(1)
    if action is SettleAction.RETRIED:
        m.adder(m.retried, label, o.reason or UNKNOWN)(1)


def test_retried_and_confirmed_updates_are_the_generic_ones_whatever_the_mix() -> None:
    """The bound fast paths of ``settled`` (a retry) and ``confirmed`` export exactly what the
    generic updates export: known and unknown job types, several reasons, a zero duration, a
    retry without an error type or reason, unknown publish kinds."""
    from conveyor.common.jobs.outcome import Outcome, OutcomeKind, SettleAction
    from conveyor.common.metrics import WorkerMetrics

    fast, reference = WorkerMetrics(), WorkerMetrics()
    for metrics in (fast, reference):
        metrics.know_job_types(["t.a", "t.b"])
    rng = random.Random(18)
    for _ in range(2000):
        job_type = rng.choice(["t.a", "t.b", "t.unknown", None])
        outcome = Outcome(
            OutcomeKind.RETRY,
            reason=rng.choice(["error", "timeout", "payload_unavailable", None]),
            error_type=rng.choice(["ValueError", "JobTimeout", None]),
            duration=rng.choice([0.0, 0.0004, 0.3, 2.5, 1e9]),
        )
        fast.settled(job_type, SettleAction.RETRIED, outcome)
        _reference_settled(reference, job_type, SettleAction.RETRIED, outcome)
        kind, seconds = rng.choice(["retry", "defer", "dead_letter", "job", "bogus"]), rng.choice([-1.0, 0.002, 9.0])
        fast.confirmed(kind, seconds)
        reference.observer(reference.publish_confirm, kind if kind in ("retry", "defer", "dead_letter", "job")
                           else "unknown")(max(0.0, seconds))

    def exported(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {key: v for key, v in samples(metrics.render()).items() if not key[0].endswith("_created") and not key[0].startswith(("process_", "python_"))}

    assert exported(fast) == exported(reference)
    assert set(fast._confirm_by_kind) == {"retry", "defer", "dead_letter", "job"}, "only the known kinds are kept"
