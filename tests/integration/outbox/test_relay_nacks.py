"""A broker's nack is backpressure the outbox absorbs, on the real PostgreSQL and RabbitMQ: the
row stays unsent (not failed) and is published once the queue takes messages again; only a
row nacked for longer than ``nack_patience`` is marked failed for an operator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import aio_pika
import asyncpg
import pytest

from conveyor.common.errors import PublishNacked
from conveyor.common.transport.factory import transport_from_url
from conveyor.common.transport.rabbitmq.topology import jobs_exchange
from conveyor.producer.outbox import OutboxRelay, RelayConfig, failed_rows
from conveyor.producer.producer import Producer
from tests.integration.outbox.test_relay import _add

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def refusing(amqp_url: str, queue_name: str) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """The work queue, plus a queue on the same route that takes nothing (length limit 0 with
    ``reject-publish``): the broker nacks every publish to the route until it is deleted."""
    async with transport_from_url(amqp_url) as admin:
        await admin.declare(queue_name)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    full = await channel.declare_queue(f"{queue_name}.full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    await full.bind(jobs_exchange(queue_name), routing_key=queue_name)
    yield full
    await full.delete(if_unused=False, if_empty=False)
    await connection.close()
    async with transport_from_url(amqp_url) as admin:
        await admin.delete(queue_name)


def _relay(database_url: str, table: str, amqp_url: str, **config: object) -> OutboxRelay:
    return OutboxRelay(database_url,
                       lambda: Producer(transport_from_url(amqp_url), allow_unregistered=True,
                                        declare_queues=False, publish_tries=1),
                       config=RelayConfig(table=table, **config))  # type: ignore[arg-type]


async def test_nacked_rows_wait_unsent_and_are_published_once_the_queue_takes_them(
        database_url: str, table: str, amqp_url: str, queue_name: str, db: asyncpg.Connection,
        refusing: aio_pika.abc.AbstractQueue) -> None:
    ids = _add(database_url, table, 3, queue=queue_name)
    async with _relay(database_url, table, amqp_url) as relay:
        for _ in range(4):  # the nack of every try, each one a whole batch
            assert await relay.relay_once() == 0
        rows = await db.fetch(f"SELECT sent_at, failed_at, attempts, last_error FROM {table}")
        assert len(rows) == 3
        assert all(r["sent_at"] is None and r["failed_at"] is None for r in rows), "backpressure is not a failure"
        assert all(r["attempts"] == 4 and r["last_error"].startswith("PublishNacked") for r in rows)
        assert await failed_rows(db, table) == []
        await refusing.delete(if_unused=False, if_empty=False)  # the queue takes messages again
        assert await relay.relay_once() == 3
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE sent_at IS NULL") == 0
    async with transport_from_url(amqp_url) as reader:
        seen = set()
        while (delivery := await reader.get(queue_name)) is not None:
            seen.add(delivery.message_id)
            await delivery.ack()
    # A nack from one of two bound queues may still leave a copy in the other: a duplicate
    # under the same job id, which the consumers' idempotency turns into one effect.
    assert seen == set(ids)


async def test_a_row_nacked_past_the_patience_is_marked_failed_with_the_nack(
        database_url: str, table: str, amqp_url: str, queue_name: str, db: asyncpg.Connection,
        refusing: aio_pika.abc.AbstractQueue) -> None:
    _add(database_url, table, 2, queue=queue_name)
    async with _relay(database_url, table, amqp_url, nack_patience=timedelta(seconds=1)) as relay:
        assert await relay.relay_once() == 0
        assert await failed_rows(db, table) == []
        await asyncio.sleep(1.2)
        assert await relay.relay_once() == 0
        failed = await failed_rows(db, table)
    assert len(failed) == 2 and all(r.last_error.startswith("PublishNacked") for r in failed)


async def test_the_transport_says_a_nack_is_a_nack(
        amqp_url: str, queue_name: str, refusing: aio_pika.abc.AbstractQueue) -> None:
    producer = Producer(transport_from_url(amqp_url), allow_unregistered=True, declare_queues=False,
                        publish_tries=1)
    async with producer:
        with pytest.raises(PublishNacked, match="nack"):
            await producer.publish("email.send", {"to": "a@example.com"}, queue=queue_name)
