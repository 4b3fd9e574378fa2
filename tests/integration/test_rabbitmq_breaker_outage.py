"""A dependency outage longer than any breaker cycle, on a real RabbitMQ 4 (issue 13, defect 2).

Quorum queues dead-letter a message after 20 deliveries by default, and on RabbitMQ 4.0 every
hand-back (a nack with requeue, a closed channel holding the message) is a delivery. A worker
whose breaker opens and half-opens again and again must therefore never hand the queue's
messages back cycle after cycle: the probe takes one message, and a paused queue has no consumer.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.consumer.breaker import BreakerConfig
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.conftest import wait_until

pytestmark = pytest.mark.rabbitmq

JOBS = 20
CYCLES = 25  # more than RabbitMQ 4's default delivery limit of 20
CONCURRENCY = 4


class Call(BaseModel):
    n: int


def half_opens(worker: Worker) -> float:
    value: float = worker.metrics.breaker_transitions.labels("dep", "half_open")._value.get()
    return value


async def test_an_outage_of_more_than_twenty_breaker_cycles_dead_letters_nothing(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    dependency_up = False
    succeeded: set[int] = set()
    jobs = JobRegistry()

    @jobs.job("t.call", queue=queue_name, breaker="dep", timeout=10,
              retry=RetryPolicy(max_attempts=100, base=0.2, factor=1, jitter=0))
    async def call(payload: Call, ctx: JobContext) -> None:
        if not dependency_up:
            raise RetryableError("dependency down")
        succeeded.add(payload.n)

    await transport.declare(queue_name)
    async with Producer.for_registry(transport, jobs, manage_transport=False) as producer:
        for n in range(JOBS):
            await producer.publish("t.call", Call(n=n))
    config = WorkerConfig(concurrency=CONCURRENCY, metrics_interval=0, grace_period=5,
                          breaker=BreakerConfig(consecutive_failures=1, reset_timeout=0.2))
    async with Worker(transport, jobs, config=config) as worker:
        await wait_until(lambda: half_opens(worker) >= 1, what="the breaker to half-open")
        released_at_opening = worker.counts["released"]
        await wait_until(lambda: half_opens(worker) > CYCLES, timeout=60, what=f"{CYCLES} open/half-open cycles")
        stats = await transport.stats(queue_name)
        assert worker.counts["dead_lettered"] == 0
        assert stats.dead_letters == 0, "nothing reached the broker's delivery limit"
        assert worker.counts["released"] == released_at_opening, "no cycle handed a message back"
        assert released_at_opening <= CONCURRENCY - 1, "only what came with the first failure was handed back"
        dependency_up = True
        await wait_until(lambda: len(succeeded) == JOBS, timeout=60, what="every job after the recovery")
        await asyncio.sleep(0.5)  # any straggler (a hand-back loop) would show by now
        exported = worker.metrics.deliveries_released.labels(queue_name, "breaker")._value.get()
        assert exported == worker.counts["released"], "every hand-back is in /metrics"
    stats = await transport.stats(queue_name)
    assert (stats.ready, stats.dead_letters) == (0, 0)
    assert worker.counts["dead_lettered"] == 0
