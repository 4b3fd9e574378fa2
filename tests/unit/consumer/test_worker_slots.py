"""The worker's slots (``common.tasks.Slots``): never more jobs at once than ``concurrency``,
however many deliveries the broker hands over, and none lost when a drain ends the wait."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.conftest import wait_until


class Job(BaseModel):
    n: int


@pytest.mark.parametrize("sync", [False, True])
async def test_prefetch_above_concurrency_never_runs_more_than_concurrency_at_once(sync: bool) -> None:
    broker = MemoryBroker()
    jobs = JobRegistry()
    running, peak, done = [0], [0], []
    release = asyncio.Event()

    if sync:
        import threading

        lock, gate = threading.Lock(), threading.Event()

        @jobs.job("t.slots")
        def blocking(payload: Job, ctx: JobContext) -> None:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            gate.wait(10)
            with lock:
                running[0] -= 1
                done.append(payload.n)
    else:

        @jobs.job("t.slots")
        async def handler(payload: Job, ctx: JobContext) -> None:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            await release.wait()
            running[0] -= 1
            done.append(payload.n)

    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        for n in range(12):
            await producer.publish("t.slots", Job(n=n))
    config = WorkerConfig(concurrency=3, prefetch=12)
    transport = MemoryTransport(broker)
    await transport.connect()
    async with Worker(transport, jobs, config=config) as worker:
        await wait_until(lambda: running[0] == 3, what="three jobs running")
        await asyncio.sleep(0.05)
        assert peak[0] == 3 and worker.in_flight == 3, "nine deliveries wait for a slot"
        release.set()
        if sync:
            gate.set()
        await wait_until(lambda: worker.counts["succeeded"] == 12, what="all twelve jobs")
    assert peak[0] == 3 and sorted(done) == list(range(12))
    assert worker._slots.free == 3, "every slot given back"


async def test_a_drain_gives_back_the_deliveries_still_waiting_for_a_slot() -> None:
    broker = MemoryBroker()
    jobs = JobRegistry()
    started: list[int] = []

    @jobs.job("t.slots")
    async def handler(payload: Job, ctx: JobContext) -> None:
        started.append(payload.n)
        await asyncio.sleep(0.05)

    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        for n in range(6):
            await producer.publish("t.slots", Job(n=n))
    transport = MemoryTransport(broker)
    await transport.connect()
    worker = Worker(transport, jobs, config=WorkerConfig(concurrency=1, prefetch=6))
    await worker.start()
    await wait_until(lambda: len(started) == 1, what="the first job")
    await worker.stop(grace_period=5)
    assert len(started) == 1 and worker.counts["succeeded"] == 1
    assert worker._slots.free == 1
    assert broker.depth(DEFAULT_QUEUE) == 5, "the five that waited are back on the queue, unstarted"
