"""Cancellation on every broker: the control channel's broadcast, and jobs cancelled while queued,
delayed or running (async and sync handlers), twice, or unknown. A cancelled job is acked, never
retried or dead-lettered, and its record ends ``cancelled``.

The store is the in-memory one shared by the test's producer, worker and operator (the store is
not what differs between brokers; its own contract runs in tests/integration). The worker's
poll of the store is off (an hour), so a running job can only be stopped by the broadcast.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import UnknownJob
from conveyor.common.job_state import JobState, MemoryJobStateStore
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.consumer.middleware.job_state import JobStateConfig
from conveyor.consumer.ops.jobs import cancel_job
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer
from tests.conformance.test_job_lifecycle import Ping, dead_letters, fast_config
from tests.conftest import wait_until
from tests.support.backends import Backend


def _channel() -> str:
    return f"conveyor.control.test.{uuid.uuid4().hex[:10]}"  # other tests' broadcasts never reach ours


async def _producer(backend: Backend, jobs: JobRegistry, store: MemoryJobStateStore) -> Producer:
    producer = Producer.for_registry(await backend.transport(), jobs, manage_transport=False, job_state=store)
    return await producer.__aenter__()


def _worker(backend_transport: object, jobs: JobRegistry, store: MemoryJobStateStore, channel: str) -> Worker:
    config = JobStateConfig(cancel_poll=3600, control_channel=channel, flush_interval=0.05)
    return Worker(backend_transport, jobs, config=fast_config(), job_state=store,  # type: ignore[arg-type]
                  job_state_config=config)


async def test_a_broadcast_reaches_every_subscriber_until_it_cancels(backend: Backend) -> None:
    channel = _channel()
    got: dict[str, list[bytes]] = {"a": [], "b": []}

    def collect(name: str):  # type: ignore[no-untyped-def]
        async def handler(body: bytes) -> None:
            got[name].append(body)
        return handler

    a = await (await backend.transport()).subscribe(channel, collect("a"))
    b = await (await backend.transport()).subscribe(channel, collect("b"))
    assert a.attached and b.attached
    sender = await backend.transport()
    await sender.broadcast(channel, b"one")
    await wait_until(lambda: got["a"] == [b"one"] and got["b"] == [b"one"], what="both subscribers", timeout=15)
    await b.cancel()
    await sender.broadcast(channel, b"two")
    await wait_until(lambda: got["a"] == [b"one", b"two"], what="the remaining subscriber", timeout=15)
    await asyncio.sleep(0.5)
    assert got["b"] == [b"one"], "a cancelled subscription received a broadcast"
    await a.cancel()


async def test_a_delayed_job_cancelled_before_it_arrives_is_acked_and_never_runs(backend: Backend) -> None:
    store, channel, ran = MemoryJobStateStore(), _channel(), []
    jobs = JobRegistry()

    @jobs.job("test.ping", queue=backend.queue)
    async def handler(payload: Ping, ctx: JobContext) -> None:
        ran.append(payload.n)

    producer = await _producer(backend, jobs, store)
    handle = await producer.publish("test.ping", Ping(n=1), delay=1.0)
    await producer.__aexit__(None, None, None)  # flushes its queued/scheduled record
    assert (await handle.status()).state is JobState.SCHEDULED
    result, _ = await cancel_job(store, handle.job_id, control=await backend.transport(), channel=channel)
    assert result.changed and result.state is JobState.CANCELLED
    async with _worker(await backend.transport(), jobs, store, channel) as worker:
        await wait_until(lambda: worker.counts["cancelled"] == 1, what="the cancelled job's arrival", timeout=30)
        assert worker.job_state is not None
        await worker.job_state.writer.flush()
    assert ran == [] and worker.counts["dead_lettered"] == 0 and await dead_letters(backend) == []
    record = await handle.status()
    assert record.state is JobState.CANCELLED and record.attempts[0].outcome == "cancelled"


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_running_job_is_cancelled_by_the_broadcast_and_never_retried(backend: Backend, kind: str) -> None:
    store, channel = MemoryJobStateStore(), _channel()
    started = threading.Event()
    jobs = JobRegistry()
    policy = RetryPolicy(max_attempts=5, base=0.2, jitter=0.0)

    if kind == "async":
        @jobs.job("test.ping", queue=backend.queue, timeout=60, retry=policy)
        async def handler(payload: Ping, ctx: JobContext) -> None:
            started.set()
            await asyncio.sleep(60)
    else:
        @jobs.job("test.ping", queue=backend.queue, timeout=60, retry=policy)
        def handler(payload: Ping, ctx: JobContext) -> None:  # type: ignore[misc]
            started.set()
            while not ctx.cancelled:
                threading.Event().wait(0.02)

    producer = await _producer(backend, jobs, store)
    async with _worker(await backend.transport(), jobs, store, channel) as worker:
        handle = await producer.publish("test.ping", Ping(n=1))
        await asyncio.to_thread(started.wait, 30)
        assert worker.job_state is not None
        await worker.job_state.writer.flush()  # the store says running
        operator = await backend.transport()  # another process's connection
        first, sent = await cancel_job(store, handle.job_id, control=operator, channel=channel)
        assert first.running and sent
        second, _ = await cancel_job(store, handle.job_id, control=operator, channel=channel)
        assert second.changed is False  # cancel twice: harmless
        await wait_until(lambda: worker.counts["cancelled"] == 1, what="the handler to be cancelled", timeout=20)
        await asyncio.sleep(1.0)  # a retry would have come by now
        await worker.job_state.writer.flush()
    assert worker.counts["retried"] == 0 and worker.counts["dead_lettered"] == 0
    assert await dead_letters(backend) == []
    record = await handle.status()
    assert record.state is JobState.CANCELLED and [a.outcome for a in record.attempts] == ["cancelled"]
    await producer.__aexit__(None, None, None)


async def test_cancelling_an_unknown_job_is_a_one_line_error_with_a_reason(backend: Backend) -> None:
    with pytest.raises(UnknownJob) as caught:
        await cancel_job(MemoryJobStateStore(), "no-such-job", control=await backend.transport(), channel=_channel())
    assert caught.value.reason == "unknown_job" and "\n" not in str(caught.value)


async def test_a_job_cancelled_between_retries_never_runs_again(backend: Backend) -> None:
    store, channel, attempts = MemoryJobStateStore(), _channel(), []
    jobs = JobRegistry()

    # The retry waits 3 s on the broker: the cancel's broadcast (the worker's poll is off here) has
    # that long to reach the worker before the copy does.
    @jobs.job("test.ping", queue=backend.queue, retry=RetryPolicy(max_attempts=5, base=3.0, jitter=0.0))
    async def handler(payload: Ping, ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("fails; its retry waits on the broker")

    producer = await _producer(backend, jobs, store)
    handle = await producer.publish("test.ping", Ping(n=1))
    async with _worker(await backend.transport(), jobs, store, channel) as worker:
        await wait_until(lambda: worker.counts["retried"] == 1, what="the first attempt to fail", timeout=20)
        assert worker.job_state is not None
        await worker.job_state.writer.flush()
        result, _ = await cancel_job(store, handle.job_id, control=await backend.transport(), channel=channel)
        assert result.previous is JobState.RETRYING and result.state is JobState.CANCELLED
        await wait_until(lambda: worker.counts["cancelled"] == 1, what="the retry copy to arrive", timeout=30)
        await worker.job_state.writer.flush()
    assert attempts == [1] and worker.counts["dead_lettered"] == 0 and await dead_letters(backend) == []
    assert (await handle.status()).state is JobState.CANCELLED
    await producer.__aexit__(None, None, None)


async def test_with_two_workers_the_one_running_the_job_stops_it(backend: Backend) -> None:
    store, channel = MemoryJobStateStore(), _channel()
    started = asyncio.Event()
    jobs = JobRegistry()

    @jobs.job("test.ping", queue=backend.queue, timeout=60)
    async def handler(payload: Ping, ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(60)

    producer = await _producer(backend, jobs, store)
    first = _worker(await backend.transport(), jobs, store, channel)
    second = _worker(await backend.transport(), jobs, store, channel)
    async with first, second:
        handle = await producer.publish("test.ping", Ping(n=1))
        await asyncio.wait_for(started.wait(), 30)
        for worker in (first, second):  # the store knows the job once a writer flushed (the consistency model)
            assert worker.job_state is not None
            await worker.job_state.writer.flush()
        result, _ = await cancel_job(store, handle.job_id, control=await backend.transport(), channel=channel)
        assert result.running
        await wait_until(lambda: first.counts["cancelled"] + second.counts["cancelled"] == 1,
                         what="the running worker to stop it", timeout=20)
    assert first.counts["retried"] + second.counts["retried"] == 0
    assert await dead_letters(backend) == []
    await producer.__aexit__(None, None, None)


async def test_a_job_cancelled_while_its_worker_restarts_never_runs_again(backend: Backend) -> None:
    """The cancel's broadcast misses the worker running the job (it listens elsewhere, as one that is
    restarting would); that worker drains and gives the job back unfinished; the worker that starts
    next finds the cancel in the store when the job arrives, acks it and never runs it."""
    store, channel, runs = MemoryJobStateStore(), _channel(), []
    jobs = JobRegistry()

    @jobs.job("test.ping", queue=backend.queue, timeout=60)
    async def handler(payload: Ping, ctx: JobContext) -> None:
        runs.append(payload.n)
        await asyncio.sleep(60)

    producer = await _producer(backend, jobs, store)
    going = _worker(await backend.transport(), jobs, store, _channel())  # deaf to our channel
    async with going:
        handle = await producer.publish("test.ping", Ping(n=1))
        await wait_until(lambda: runs == [1], what="the first run to start", timeout=30)
        assert going.job_state is not None
        await going.job_state.writer.flush()
        result, _ = await cancel_job(store, handle.job_id, control=await backend.transport(), channel=channel)
        assert result.running
        await going.drain(grace_period=0.2)  # the restart: the job goes back to the broker unfinished
    assert going.counts["cancelled"] == 0  # it never heard of the cancel
    async with _worker(await backend.transport(), jobs, store, channel) as coming:
        await wait_until(lambda: coming.counts["cancelled"] == 1, what="the job to come back and be acked",
                         timeout=30)
        assert coming.job_state is not None
        await coming.job_state.writer.flush()
    assert runs == [1] and coming.counts["dead_lettered"] == 0 and await dead_letters(backend) == []
    assert (await handle.status()).state is JobState.CANCELLED
    await producer.__aexit__(None, None, None)
