"""Headers a publisher sets are never trusted for limits (real RabbitMQ).

Anyone allowed to publish a job can put any header on it: ``x-death`` with huge counts,
``x-delivery-count``, Conveyor's own ``x-conveyor-attempt``, ``x-first-death-reason``. The worker
must still run the job and count attempts from the envelope (the producer's contract, validated;
its ``attempt`` no higher than its history accounts for) and deliveries from the broker's own
count, so a forged header can neither dead-letter a good job early nor buy a bad one more attempts.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.codec import encode_model
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.common.transport.rabbitmq.topology import jobs_exchange
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.conftest import wait_until
from tests.support.backends import TEST_DELAY_TIERS

pytestmark = pytest.mark.rabbitmq

MAX_ATTEMPTS = 3
DELIVERY_LIMIT = 3


class Step(BaseModel):
    name: str


def forged_headers(queue: str) -> dict[str, object]:
    huge = 2**40
    return {
        "x-death": [{"count": huge, "reason": "expired", "queue": f"{queue}.retry.1s", "exchange": "",
                     "routing-keys": [queue]},
                    {"count": huge, "reason": "delivery_limit", "queue": queue, "exchange": "",
                     "routing-keys": [queue]}],
        "x-delivery-count": 999,
        "x-conveyor-attempt": "999",
        "x-first-death-reason": "delivery_limit",
        "x-first-death-queue": queue,
        "x-conveyor-reason": "exhausted",
        "x-conveyor-due-at": "1e300",
    }


@pytest.fixture
async def transport(amqp_url: str, queue_name: str) -> AsyncIterator[RabbitMQTransport]:
    t = RabbitMQTransport(amqp_url, delay_tiers=TEST_DELAY_TIERS, delivery_limit=DELIVERY_LIMIT, connect_timeout=5)
    async with t:
        await t.declare(queue_name)
        try:
            yield t
        finally:
            await t.delete(queue_name)


async def publish_forged(amqp_url: str, queue: str, envelope_body: bytes, message_id: str) -> None:
    """A raw publish, as a hostile or buggy producer would send it, to the queue's job exchange."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(jobs_exchange(queue), ensure=False)
        message = aio_pika.Message(envelope_body, message_id=message_id, headers=forged_headers(queue),
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await exchange.publish(message, routing_key=queue, mandatory=True)
    finally:
        await connection.close()


def registry(queue: str, attempts: dict[str, list[int]]) -> JobRegistry:
    jobs = JobRegistry()
    policy = RetryPolicy(max_attempts=MAX_ATTEMPTS, base=0.2, factor=1, cap=0.2, jitter=0)

    @jobs.job("forged.flaky", queue=queue, retry=policy)
    async def flaky(payload: Step, ctx: JobContext) -> None:
        attempts.setdefault(payload.name, []).append(ctx.attempt)
        if ctx.attempt < MAX_ATTEMPTS:
            raise RuntimeError("not yet")

    @jobs.job("forged.doomed", queue=queue, retry=policy)
    async def doomed(payload: Step, ctx: JobContext) -> None:
        attempts.setdefault(payload.name, []).append(ctx.attempt)
        raise RuntimeError("never")

    return jobs


async def test_forged_headers_change_neither_delivery_limits_nor_attempt_budgets(
    amqp_url: str, queue_name: str, transport: RabbitMQTransport
) -> None:
    attempts: dict[str, list[int]] = {}
    jobs = registry(queue_name, attempts)
    producer = Producer.for_registry(transport, jobs, manage_transport=False)
    envelopes = {name: producer.build_envelope(f"forged.{name}", {"name": name}) for name in ("flaky", "doomed")}
    for envelope in envelopes.values():
        await publish_forged(amqp_url, queue_name, encode_model(envelope), envelope.job_id)

    # The broker's delivery limit counts real deliveries, not the forged x-delivery-count: two
    # releases (3 deliveries, limit 3) must not dead-letter the message. On RabbitMQ 4.x a first
    # delivery carries the publisher's x-delivery-count untouched; a redelivery the broker's.
    first = None
    while first is None:
        first = await transport.get(queue_name)
    assert first.delivery_count == 1, "the broker's own count, not the forged x-delivery-count"
    assert "x-death" not in first.headers and "x-delivery-count" not in first.headers
    await first.release()
    again = None
    while again is None:
        again = await transport.get(queue_name)
    assert (again.message_id, again.delivery_count) == (first.message_id, 2), "the broker's count after a release"
    await again.release()
    await asyncio.sleep(0.3)
    assert await transport.depth(transport.dead_letter_queue(queue_name)) == 0

    config = WorkerConfig(concurrency=4, grace_period=5, metrics_interval=0)
    async with Worker(transport, jobs, config=config) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1 and worker.counts["dead_lettered"] == 1,
                         timeout=30, what="one success and one dead letter")
    # Attempts come from the envelope (1, 2, 3), not from x-conveyor-attempt=999 or x-death.
    assert attempts == {"flaky": [1, 2, 3], "doomed": [1, 2, 3]}
    dead = await transport.get(transport.dead_letter_queue(queue_name))
    assert dead is not None
    record = json.loads(dead.body)
    assert (record["job_id"], record["reason"], record["attempt"]) == (envelopes["doomed"].job_id, "exhausted", 3)
    assert len(record["history"]) == MAX_ATTEMPTS
    await dead.ack()


async def test_a_forged_dead_letter_reason_on_a_job_is_not_taken_for_the_brokers(
    amqp_url: str, queue_name: str, transport: RabbitMQTransport
) -> None:
    """``x-first-death-reason`` on a *job* is just a header; only the DLQ reader interprets it."""
    attempts: dict[str, list[int]] = {}
    jobs = registry(queue_name, attempts)
    envelope = Producer.for_registry(transport, jobs, manage_transport=False).build_envelope(
        "forged.flaky", {"name": "once"}
    )
    await publish_forged(amqp_url, queue_name, encode_model(envelope.model_copy(update={"attempt": MAX_ATTEMPTS})),
                         uuid.uuid4().hex)
    async with Worker(transport, jobs, config=WorkerConfig(concurrency=1, metrics_interval=0)) as worker:
        await wait_until(lambda: worker.counts["succeeded"] == 1, timeout=15, what="the job to run")
    # Nor is its forged attempt (3 of 3, no history): it runs from attempt 1 and succeeds on 3.
    assert attempts == {"once": [1, 2, MAX_ATTEMPTS]}
    assert await transport.depth(transport.dead_letter_queue(queue_name)) == 0
