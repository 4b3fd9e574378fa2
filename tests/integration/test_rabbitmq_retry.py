"""The delayed-retry path on a real RabbitMQ 4 when the broker gets in its way (issue 18 goal 5).

A retry copy goes to a delay tier, confirmed, and only then is the original acked. These tests
break the step in between: a copy the broker refuses (its tier is gone, so the copy is
unroutable) and a TCP connection cut while copies are in flight. Either way the original must
stay with the broker and come back, the copy must keep the attempt history and the error, and
every job must end succeeded, none lost and none dead-lettered.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aio_pika
import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.common.transport.rabbitmq.topology import tier_queue
from conveyor.consumer.breaker import BreakerConfig
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.conftest import wait_until
from tests.faults.proxy import FaultProxy
from tests.support.backends import TEST_DELAY_TIERS

pytestmark = pytest.mark.rabbitmq

DELAY = TEST_DELAY_TIERS[0]  # exactly the smallest tier
POLICY = RetryPolicy(max_attempts=3, base=DELAY, factor=1.0, cap=DELAY, jitter=0.0)
NEVER_TRIPS = BreakerConfig(consecutive_failures=10**9, failure_rate=1.0, min_calls=10**9)


class Item(BaseModel):
    n: int


class Runs:
    """Every run of every job: (n, attempt), and the history each attempt 2 arrived with."""

    def __init__(self) -> None:
        self.attempts: collections.Counter[tuple[int, int]] = collections.Counter()
        self.histories: dict[int, list[tuple[str, str | None, str | None]]] = {}

    def first_runs(self, n: int) -> int:
        return self.attempts[(n, 1)]

    def succeeded(self) -> set[int]:
        return {n for (n, attempt) in self.attempts if attempt == 2}


def registry(queue: str, runs: Runs, on_first_run: Callable[[], Awaitable[None]] | None = None) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.job("t.retry_path", queue=queue, retry=POLICY, timeout=10)
    async def handle(payload: Item, ctx: JobContext) -> None:
        runs.attempts[(payload.n, ctx.attempt)] += 1
        if ctx.attempt == 1:
            if on_first_run is not None:
                await on_first_run()
            raise RetryableError(f"item {payload.n} fails once")
        runs.histories[payload.n] = [(h.outcome, h.error_type, h.error_message) for h in ctx.envelope.history]

    return jobs


async def publish(transport: RabbitMQTransport, jobs: JobRegistry, count: int) -> None:
    async with Producer.for_registry(transport, jobs, manage_transport=False) as producer:
        for n in range(count):
            await producer.publish("t.retry_path", Item(n=n))


async def delete_tier(amqp_url: str, queue: str) -> None:
    """Take the copy's tier away: its binding goes with it, so the copy comes back unroutable."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(tier_queue(queue, DELAY))


def assert_history_kept(runs: Runs, count: int) -> None:
    for n in range(count):
        assert runs.histories[n] == [("retried", "RetryableError", f"item {n} fails once")], n


async def test_a_retry_copy_the_broker_refuses_leaves_the_original_with_the_broker_until_it_can_be_sent(
    transport: RabbitMQTransport, queue_name: str, amqp_url: str
) -> None:
    count = 3
    runs = Runs()
    tier_gone = asyncio.Event()
    jobs = registry(queue_name, runs, tier_gone.wait)
    config = WorkerConfig(concurrency=count, metrics_interval=0, grace_period=5, breaker=NEVER_TRIPS)
    async with Worker(transport, jobs, config=config) as worker:
        await publish(transport, jobs, count)
        # The worker and the producer both declared the queue; the tier goes while the jobs run.
        await wait_until(lambda: all(runs.first_runs(n) == 1 for n in range(count)), what="every first run")
        await delete_tier(amqp_url, queue_name)
        tier_gone.set()
        # Refused (returned unroutable) → held for a pause → handed back → delivered again.
        await wait_until(lambda: all(runs.first_runs(n) >= 2 for n in range(count)), timeout=20,
                         what="every original to come back after its copy was refused")
        assert worker.counts["retried"] == 0, "no copy was confirmed, so no original was acked"
        assert worker.counts["dead_lettered"] == 0
        assert not runs.succeeded()
        await transport.declare(queue_name)  # the tier is back (before the third refusal)
        await wait_until(lambda: runs.succeeded() == set(range(count)), timeout=20,
                         what="every job's retry after the tier came back")
        await wait_until(lambda: worker.counts["succeeded"] == count, what="the successes' acks")
        assert worker.counts["dead_lettered"] == 0
    # Each job's copy was written once it could be, from a first run of the original.
    assert all(runs.attempts[(n, 2)] == 1 for n in range(count))
    assert_history_kept(runs, count)
    stats = await transport.stats(queue_name)
    assert (stats.ready, stats.delayed, stats.dead_letters) == (0, 0, 0)


async def test_retries_in_flight_when_the_connection_is_cut_are_neither_lost_nor_dead_lettered(
    transport: RabbitMQTransport, queue_name: str, amqp_url: str
) -> None:
    count = 40
    runs = Runs()
    target = urlsplit(amqp_url)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 5672) as proxy:
        cuts: list[int] = []

        async def cut_once() -> None:
            # The 10th failure cuts both connections just before its copy is published, with
            # other copies and acks in flight.
            if sum(runs.attempts[(n, 1)] for n in range(count)) == 10 and not cuts:
                cuts.append(proxy.cut())

        jobs = registry(queue_name, runs, cut_once)
        await publish(transport, jobs, count)
        proxied = RabbitMQTransport(proxy.rewrite_url(amqp_url), delay_tiers=TEST_DELAY_TIERS,
                                    connect_timeout=5, reconnect_interval=0.2)
        config = WorkerConfig(concurrency=8, metrics_interval=0, grace_period=5, breaker=NEVER_TRIPS)
        async with proxied, Worker(proxied, jobs, config=config) as worker:
            await wait_until(lambda: runs.succeeded() == set(range(count)), timeout=60,
                             what="every job to succeed on its retry despite the cut")
            assert cuts == [2], "both connections (publisher and consumer) were cut"
            assert worker.counts["dead_lettered"] == 0
        # At-least-once: a copy confirmed just before the cut whose original came back anyway
        # runs a second time; a job never runs at attempt 2 without its history.
        assert_history_kept(runs, count)
        await asyncio.sleep(DELAY * 3)  # a stray copy would be back in the work queue by now
        stats = await transport.stats(queue_name)
        assert (stats.delayed, stats.dead_letters) == (0, 0)
        assert stats.ready == 0, "every copy was consumed: nothing left behind"
