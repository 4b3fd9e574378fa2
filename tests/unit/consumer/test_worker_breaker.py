"""The worker's breaker transitions on the in-memory broker with a fake clock: exact, no sleeps.

The hostile case is a race: a half-open probe that fails while the worker is still attaching
the probing consumer (on RabbitMQ deliveries start flowing before ``basic.consume-ok`` has
been handled). A paused queue must never be left with a consumer: it would hand every message
straight back until the broker's delivery limit dead-letters the whole queue.
"""

from __future__ import annotations

import asyncio
import random

from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.clock import FakeClock
from conveyor.common.errors import RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.base import ConsumerHandle, DeliveryHandler
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.breaker import BreakerConfig, BreakerState
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


async def spin(turns: int = 50) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


class SlowAttach(MemoryTransport):
    """``consume`` registers the consumer at once (deliveries flow) but returns only when let go,
    as on RabbitMQ, where messages can arrive before the worker's ``consume()`` call returns."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker)
        self.gate: asyncio.Event | None = None
        self.consumes: list[int] = []  # prefetch of every consume() call

    async def consume(self, queue: str, handler: DeliveryHandler, *, prefetch: int) -> ConsumerHandle:
        handle = await super().consume(queue, handler, prefetch=prefetch)
        self.consumes.append(prefetch)
        if self.gate is not None:
            await self.gate.wait()
        return handle


def consumers(broker: MemoryBroker, queue: str = DEFAULT_QUEUE) -> int:
    return broker.stats(queue, queue + ".dlq").consumers or 0


async def test_a_probe_failing_while_its_consumer_attaches_leaves_the_paused_queue_without_a_consumer() -> None:
    clock = FakeClock()
    broker = MemoryBroker(clock)
    calls: list[int] = []
    dependency_up = False
    jobs = JobRegistry()

    @jobs.job("t.dep", retry=RetryPolicy(max_attempts=1000, base=1, factor=1, jitter=0))
    async def handler(payload: Job, ctx: JobContext) -> None:
        calls.append(payload.n)
        if not dependency_up:
            raise RetryableError("dependency down")

    transport = SlowAttach(broker)
    await transport.connect()
    config = WorkerConfig(concurrency=4, metrics_interval=0,
                          breaker=BreakerConfig(consecutive_failures=1, reset_timeout=30))
    async with Producer.for_registry(MemoryTransport(broker), jobs, clock=clock) as producer:
        for i in range(20):
            await producer.publish("t.dep", Job(n=i))
        async with Worker(transport, jobs, config=config, clock=clock, rng=random.Random(0)) as worker:
            breaker = worker.breakers.get("t.dep")
            await spin()
            assert breaker.state is BreakerState.OPEN
            assert consumers(broker) == 0
            released_at_opening = worker.counts["released"]  # delivered with the first, never started
            assert released_at_opening <= 3
            for cycle in range(25):  # more open/half-open cycles than RabbitMQ's delivery limit (20)
                transport.gate = asyncio.Event()
                before = len(calls)
                clock.advance(30)  # half-open: the worker attaches a probing consumer…
                await spin()
                # …whose one delivery (the probe) ran and failed before consume() returned.
                assert len(calls) == before + 1, f"cycle {cycle}: the probe takes exactly one message"
                assert breaker.state is BreakerState.OPEN
                transport.gate.set()  # now the stale attach returns
                await spin()
                assert consumers(broker) == 0, f"cycle {cycle}: a paused queue holds no consumer"
                assert not worker._runners[DEFAULT_QUEUE].attached
                assert transport.consumes[-1] == 1, "a half-open probe attaches with prefetch 1"
            transport.gate = None
            assert worker.counts["released"] == released_at_opening, "no cycle hands anything back"
            exported = worker.metrics.deliveries_released.labels(DEFAULT_QUEUE, "breaker")._value.get()
            assert exported == released_at_opening, "every hand-back is counted in /metrics"
            assert broker.depth(DEFAULT_QUEUE + ".dlq") == 0
            dependency_up = True
            clock.advance(30)
            for _ in range(20):
                await spin()
                clock.advance(1)  # retry copies come back from their 1 s delay
            await asyncio.wait_for(broker.join(DEFAULT_QUEUE), 1)
            assert breaker.state is BreakerState.CLOSED
            assert worker.counts["succeeded"] == 20
            assert worker.counts["dead_lettered"] == 0
    assert broker.depth(DEFAULT_QUEUE + ".dlq") == 0


async def test_queues_sharing_a_breaker_each_probe_without_handing_anything_back() -> None:
    """Two queues behind one breaker, one slot between them: the second queue's probe waits for
    the slot while the first one fails and re-opens the breaker. It must still run (it was taken
    from the broker), not be handed back in every cycle."""
    clock = FakeClock()
    broker = MemoryBroker(clock)
    calls: list[str] = []
    dependency_up = False
    jobs = JobRegistry()
    retry = RetryPolicy(max_attempts=1000, base=1, factor=1, jitter=0)

    async def handler(payload: Job, ctx: JobContext) -> None:
        calls.append(ctx.queue)
        if not dependency_up:
            raise RetryableError("dependency down")

    jobs.job("t.a", queue="qa", breaker="dep", retry=retry, model=Job)(handler)
    jobs.job("t.b", queue="qb", breaker="dep", retry=retry, model=Job)(handler)
    transport = MemoryTransport(broker)
    await transport.connect()
    config = WorkerConfig(concurrency=1, metrics_interval=0,
                          breaker=BreakerConfig(consecutive_failures=1, reset_timeout=30))
    async with Producer.for_registry(MemoryTransport(broker), jobs, clock=clock) as producer:
        async with Worker(transport, jobs, config=config, clock=clock, rng=random.Random(0)) as worker:
            for i in range(10):
                await producer.publish("t.a", Job(n=i))
                await producer.publish("t.b", Job(n=i))
            await spin()
            breaker = worker.breakers.get("dep")
            assert breaker.state is BreakerState.OPEN
            released_at_opening = worker.counts["released"]
            for cycle in range(25):
                before = len(calls)
                clock.advance(30)
                await spin()
                assert breaker.state is BreakerState.OPEN
                assert sorted(calls[before:]) == ["qa", "qb"], f"cycle {cycle}: one probe per queue"
                assert consumers(broker, "qa") == consumers(broker, "qb") == 0
                assert worker.counts["released"] == released_at_opening, f"cycle {cycle}: nothing handed back"
            dependency_up = True
            clock.advance(30)
            for _ in range(30):
                await spin()
                clock.advance(1)
            await asyncio.wait_for(asyncio.gather(broker.join("qa"), broker.join("qb")), 1)
            assert worker.counts["succeeded"] == 20
            assert worker.counts["dead_lettered"] == 0


async def test_a_breaker_that_reopened_waits_its_full_reset_timeout_not_the_earlier_openings() -> None:
    clock = FakeClock()
    jobs = JobRegistry()

    @jobs.job("t.dep")
    async def handler(payload: Job, ctx: JobContext) -> None:
        return None

    transport = MemoryTransport(MemoryBroker(clock))
    await transport.connect()
    config = WorkerConfig(metrics_interval=0, breaker=BreakerConfig(consecutive_failures=1, reset_timeout=30))
    async with Worker(transport, jobs, config=config, clock=clock) as worker:
        breaker = worker.breakers.get("t.dep")
        breaker.record_failure()  # opens at t=0: half-open due at 30
        await spin()
        clock.advance(20)
        breaker.record_success()  # a job still in flight succeeded: closed…
        breaker.record_failure()  # …and open again at t=20: half-open due at 50
        await spin()
        clock.advance(10)
        await spin()
        assert breaker.state is BreakerState.OPEN, "the first opening's timer must not half-open the second"
        assert consumers(transport.broker) == 0
        clock.advance(20)
        await spin()
        assert breaker.state is BreakerState.HALF_OPEN
        assert consumers(transport.broker) == 1

