"""One suite of behaviours, run unchanged against every backend (memory, RabbitMQ, …)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.codec import decode_dead_letter, decode_envelope, encode_model
from conveyor.common.errors import AlreadySettled, PermanentError, RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.base import Delivery, OutgoingMessage
from conveyor.consumer.breaker import BreakerConfig
from conveyor.consumer.settlement import DeferPolicy
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.conftest import wait_until
from tests.support.backends import Backend


class Ping(BaseModel):
    n: int


@dataclass
class Calls:
    """What handlers saw: (job_id, attempt, monotonic time)."""

    seen: list[tuple[str, int, float]] = field(default_factory=list)

    def add(self, ctx: JobContext) -> None:
        self.seen.append((ctx.job_id, ctx.attempt, time.monotonic()))

    def of(self, job_id: str) -> list[tuple[str, int, float]]:
        return [c for c in self.seen if c[0] == job_id]


def registry_for(backend: Backend, handler, *, retry: RetryPolicy | None = None, breaker: str | None = None) -> JobRegistry:
    jobs = JobRegistry()
    jobs.job("test.ping", queue=backend.queue, retry=retry or RetryPolicy(max_attempts=3, base=0.2, jitter=0.0),
             timeout=10, breaker=breaker, model=Ping)(handler)
    return jobs


async def producer_for(backend: Backend, jobs: JobRegistry) -> Producer:
    producer = Producer.for_registry(await backend.transport(), jobs, manage_transport=False)
    return await producer.__aenter__()


async def dead_letters(backend: Backend) -> list:
    reader = await backend.transport()
    records, held = [], []
    while (delivery := await reader.get(reader.dead_letter_queue(backend.queue))) is not None:
        held.append(delivery)
        records.append(decode_dead_letter(delivery.body))
    for delivery in reversed(held):
        await delivery.release()
    return records


def fast_config(**overrides) -> WorkerConfig:
    return WorkerConfig(concurrency=overrides.pop("concurrency", 4), grace_period=overrides.pop("grace_period", 5.0),
                        **overrides)


async def test_publish_returns_after_broker_confirmed(backend: Backend) -> None:
    jobs = registry_for(backend, lambda p, c: None)
    producer = await producer_for(backend, jobs)
    receipt = await producer.publish("test.ping", Ping(n=1))
    assert receipt.tries == 1
    assert receipt.queue == backend.queue
    observer = await backend.transport()
    await wait_until(lambda: True)
    assert await observer.depth(backend.queue) == 1


async def test_ack_removes_the_message(backend: Backend) -> None:
    calls = Calls()

    async def handler(payload: Ping, ctx: JobContext) -> None:
        calls.add(ctx)

    jobs = registry_for(backend, handler)
    producer = await producer_for(backend, jobs)
    receipt = await producer.publish("test.ping", Ping(n=1))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, what="success")
    # A fresh connection sees nothing left: the ack removed it for good.
    observer = await backend.transport()
    await asyncio.sleep(0.3)
    assert await observer.depth(backend.queue) == 0
    assert await observer.get(backend.queue) is None
    assert [c[0] for c in calls.seen] == [receipt.job_id]


async def test_failure_comes_back_after_the_backoff_delay_never_at_once(backend: Backend) -> None:
    calls = Calls()

    async def handler(payload: Ping, ctx: JobContext) -> None:
        calls.add(ctx)
        if ctx.attempt == 1:
            raise RetryableError("transient")

    jobs = registry_for(backend, handler, retry=RetryPolicy(max_attempts=3, base=0.5, jitter=0.0))
    producer = await producer_for(backend, jobs)
    receipt = await producer.publish("test.ping", Ping(n=1))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, what="retried job to succeed")
    (_, a1, t1), (_, a2, t2) = calls.of(receipt.job_id)
    assert (a1, a2) == (1, 2)
    assert t2 - t1 >= 0.45, f"retry came back after {t2 - t1:.3f}s, before its 0.5s backoff"
    assert worker.counts["retried"] == 1


async def test_short_delay_is_not_stuck_behind_a_long_one(backend: Backend) -> None:
    arrived: list[int] = []

    async def handler(payload: Ping, ctx: JobContext) -> None:
        arrived.append(payload.n)

    jobs = registry_for(backend, handler)
    producer = await producer_for(backend, jobs)
    start = time.monotonic()
    await producer.publish("test.ping", Ping(n=5), delay=5.0)
    await producer.publish("test.ping", Ping(n=1), delay=0.5)
    async with Worker(await backend.transport(), jobs, config=fast_config()):
        await wait_until(lambda: arrived == [1], timeout=4.0, what="the short delay to arrive alone")
        short_at = time.monotonic() - start
        assert 0.45 <= short_at < 3.0, f"0.5s delay arrived after {short_at:.2f}s"
        await wait_until(lambda: arrived == [1, 5], timeout=10.0, what="the long delay")
        assert time.monotonic() - start >= 4.9


async def test_exhausted_retries_land_in_dlq_with_history(backend: Backend) -> None:
    async def handler(payload: Ping, ctx: JobContext) -> None:
        raise RetryableError(f"still broken on attempt {ctx.attempt}")

    jobs = registry_for(backend, handler, retry=RetryPolicy(max_attempts=3, base=0.2, jitter=0.0))
    producer = await producer_for(backend, jobs)
    receipt = await producer.publish("test.ping", Ping(n=7))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="dead letter")
    [record] = await dead_letters(backend)
    assert record.reason == "exhausted"
    assert record.job_id == receipt.job_id
    assert record.error_type == "RetryableError"
    assert [h.attempt for h in record.history] == [1, 2, 3]
    assert all(h.worker_id == worker.config.worker_id for h in record.history)
    original = decode_envelope(record.original_body)
    assert original.job_id == receipt.job_id and original.payload.data == {"n": 7}


async def test_permanent_error_is_dead_lettered_without_retry(backend: Backend) -> None:
    calls = Calls()

    async def handler(payload: Ping, ctx: JobContext) -> None:
        calls.add(ctx)
        raise PermanentError("account closed")

    jobs = registry_for(backend, handler)
    producer = await producer_for(backend, jobs)
    await producer.publish("test.ping", Ping(n=1))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="dead letter")
    assert len(calls.seen) == 1
    [record] = await dead_letters(backend)
    assert record.reason == "permanent"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed"),
        (b'{"job_id": "a", "job_id": "b"}', "malformed"),
        (b"\xff\xfe\x00", "malformed"),
        (b"x" * 5000, "oversize"),
    ],
)
async def test_poison_message_lands_in_dlq_after_one_delivery(backend: Backend, body: bytes, reason: str) -> None:
    calls = Calls()

    async def handler(payload: Ping, ctx: JobContext) -> None:
        calls.add(ctx)

    jobs = registry_for(backend, handler)
    sender = await backend.transport()
    await sender.declare(backend.queue)
    await sender.publish(backend.queue, OutgoingMessage(body=body, message_id="poison-1"))
    async with Worker(await backend.transport(), jobs, config=fast_config(max_message_bytes=4096)) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="poison in DLQ")
        await asyncio.sleep(0.3)
        assert worker.counts["dead_lettered"] == 1 and worker.counts["released"] == 0
    [record] = await dead_letters(backend)
    assert record.reason == reason
    assert record.original_body == body
    assert record.job_id is None
    assert calls.seen == []


async def test_unknown_job_type_is_dead_lettered_with_reason(backend: Backend) -> None:
    jobs = registry_for(backend, lambda p, c: None)
    other = JobRegistry()
    other.job("test.unknown", queue=backend.queue)(_noop)
    producer = Producer.for_registry(await backend.transport(), other, manage_transport=False)
    await producer.publish("test.unknown", Ping(n=1))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["dead_lettered"] == 1, what="dead letter")
    [record] = await dead_letters(backend)
    assert record.reason == "unknown_job_type"
    assert record.job_type == "test.unknown"


async def _noop(payload: Ping, ctx: JobContext) -> None:
    return None


async def test_crash_before_ack_means_redelivery(backend: Backend) -> None:
    started = asyncio.Event()

    async def hang(payload: Ping, ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(3600)

    calls = Calls()

    async def succeed(payload: Ping, ctx: JobContext) -> None:
        calls.add(ctx)

    producer = await producer_for(backend, registry_for(backend, hang))
    receipt = await producer.publish("test.ping", Ping(n=1))
    crashing_transport = await backend.transport()
    crashing = Worker(crashing_transport, registry_for(backend, hang), config=fast_config())
    await crashing.start()
    await asyncio.wait_for(started.wait(), 10)
    await crashing_transport.close()  # the process "dies": its connection goes away unacked
    async with Worker(await backend.transport(), registry_for(backend, succeed), config=fast_config()) as survivor:
        await wait_until(lambda: survivor.counts["succeeded"] == 1, what="redelivery to the survivor")
    assert calls.of(receipt.job_id)[0][1] == 1, "a crash must not spend an attempt"
    for task in list(crashing._active):
        task.cancel()


async def test_a_delivery_settles_exactly_once(backend: Backend) -> None:
    transport = await backend.transport()
    await transport.declare(backend.queue)
    await transport.publish(backend.queue, OutgoingMessage(body=b"{}", message_id="m1"))
    delivery: Delivery | None = None
    for _ in range(100):
        delivery = await transport.get(backend.queue)
        if delivery is not None:
            break
        await asyncio.sleep(0.02)
    assert delivery is not None
    await delivery.ack()
    with pytest.raises(AlreadySettled):
        await delivery.ack()
    with pytest.raises(AlreadySettled):
        await delivery.release()


async def test_open_breaker_pauses_consumption_without_spending_attempts(backend: Backend) -> None:
    calls = Calls()
    dependency_up = False

    async def handler(payload: Ping, ctx: JobContext) -> None:
        calls.add(ctx)
        if not dependency_up:
            raise RetryableError("dependency down")

    jobs = registry_for(backend, handler, retry=RetryPolicy(max_attempts=10, base=0.3, jitter=0.0), breaker="dep")
    producer = await producer_for(backend, jobs)
    ids = [(await producer.publish("test.ping", Ping(n=i))).job_id for i in range(6)]
    config = fast_config(concurrency=1, breaker=BreakerConfig(consecutive_failures=2, reset_timeout=1.0))
    async with Worker(await backend.transport(), jobs, config=config) as worker:
        await wait_until(lambda: worker.breakers.get("dep").state.name == "OPEN", what="breaker to open")
        calls_when_opened = len(calls.seen)
        await asyncio.sleep(0.6)  # well inside reset_timeout: nothing may be pulled
        assert len(calls.seen) == calls_when_opened == 2
        assert worker.ready, "a paused worker is still ready: it is waiting, not broken"
        dependency_up = True
        await wait_until(lambda: worker.counts["succeeded"] == 6, timeout=20, what="all jobs after recovery")
    assert worker.counts["dead_lettered"] == 0
    untouched = [i for i in ids if all(c[1] == 1 for c in calls.of(i))]
    assert len(untouched) >= 3, "jobs held back by the open breaker must not spend attempts"


async def test_drain_finishes_in_flight_and_returns_the_rest_unspent(backend: Backend) -> None:
    release_gate = asyncio.Event()
    started: list[int] = []

    async def slow(payload: Ping, ctx: JobContext) -> None:
        started.append(payload.n)
        await release_gate.wait()

    jobs = registry_for(backend, slow)
    producer = await producer_for(backend, jobs)
    for i in range(5):
        await producer.publish("test.ping", Ping(n=i))
    worker = Worker(await backend.transport(), jobs, config=fast_config(concurrency=2, prefetch=4))
    await worker.start()
    await wait_until(lambda: len(started) == 2, what="two jobs in flight")
    drain = asyncio.create_task(worker.drain(grace_period=5.0))
    await asyncio.sleep(0.2)
    assert not worker.ready
    release_gate.set()
    await drain
    await worker.stop()
    assert worker.counts["succeeded"] == 2

    seen: list[tuple[int, int]] = []

    async def record(payload: Ping, ctx: JobContext) -> None:
        seen.append((payload.n, ctx.attempt))

    async with Worker(await backend.transport(), registry_for(backend, record), config=fast_config()) as second:
        await wait_until(lambda: second.counts["succeeded"] == 3, what="the returned jobs")
    assert sorted(n for n, _ in seen) == sorted(set(range(5)) - set(started))
    assert all(attempt == 1 for _, attempt in seen), "drained jobs must not spend an attempt"


async def test_newer_schema_version_is_deferred_not_failed(backend: Backend) -> None:
    class PingV2(BaseModel):
        n: int
        label: str

    seen: list[int] = []

    async def v2_handler(payload: PingV2, ctx: JobContext) -> None:
        seen.append(ctx.attempt)

    old = registry_for(backend, lambda p, c: None)
    new = JobRegistry()
    new.job("test.ping", queue=backend.queue, version=2, model=PingV2)(v2_handler)
    new.schemas.register("test.ping", 1, Ping)
    new.schemas.upcaster("test.ping", 1)(lambda d: {**d, "label": "v1"})
    producer = Producer.for_registry(await backend.transport(), new, manage_transport=False)
    await producer.publish("test.ping", {"n": 1, "label": "x"})
    config = fast_config(defer=DeferPolicy(delay=0.2, max_deferrals=45))
    async with Worker(await backend.transport(), old, config=config) as old_worker:
        await wait_until(lambda: old_worker.counts["deferred"] >= 1, what="the old worker to defer")
    async with Worker(await backend.transport(), new, config=config) as new_worker:
        await wait_until(lambda: new_worker.counts["succeeded"] == 1, what="the new worker to run it")
    assert seen == [1], "a deferral must not spend an attempt"
    assert old_worker.counts["dead_lettered"] == 0


async def test_retry_copy_keeps_job_id_and_is_a_valid_envelope(backend: Backend) -> None:
    attempts: list[tuple[str, int]] = []

    async def handler(payload: Ping, ctx: JobContext) -> None:
        attempts.append((ctx.job_id, ctx.attempt))
        if ctx.attempt < 3:
            raise RuntimeError("boom")

    jobs = registry_for(backend, handler, retry=RetryPolicy(max_attempts=5, base=0.2, factor=1.0, jitter=0.0))
    producer = await producer_for(backend, jobs)
    receipt = await producer.publish("test.ping", Ping(n=1))
    async with Worker(await backend.transport(), jobs, config=fast_config()) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, what="third attempt")
    assert attempts == [(receipt.job_id, 1), (receipt.job_id, 2), (receipt.job_id, 3)]
    assert encode_model  # the codec round-trips every copy (decoded by the worker above)
