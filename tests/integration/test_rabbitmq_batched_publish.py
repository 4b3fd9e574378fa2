"""The RabbitMQ publish path that writes frames itself, several publishes per socket write
(``rabbitmq.frames``), on a real broker: every outcome of a publish in a batch is its own
(confirm, nack, return), nothing is lost or mixed up when the connection dies mid-batch, and
a publish whose confirm never comes is ``PublishOutcomeUnknown``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aio_pika
import pytest
from pydantic import BaseModel

from conveyor.common.errors import PublishNacked, PublishNotConfirmed, PublishOutcomeUnknown, TransportError
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.base import Delivery, OutgoingMessage
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.common.transport.rabbitmq.topology import jobs_exchange
from conveyor.producer.producer import Producer
from tests.faults.proxy import FaultProxy
from tests.integration.test_rabbitmq_transport import delete_queues, eventually, make_transport
from tests.integration.test_rabbitmq_transport import transport as transport  # the fixture

pytestmark = pytest.mark.rabbitmq

COUNT = 1000


def message(body: bytes = b"x") -> OutgoingMessage:
    return OutgoingMessage(body=body, message_id=uuid.uuid4().hex, headers={"k": "v"})


async def _depth(transport: RabbitMQTransport, queue: str, expected: int) -> bool:
    return await transport.depth(queue) == expected


async def test_a_batch_of_publishes_lands_whole_each_body_intact(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message())  # proves the exchange: the rest share the channel
    bodies = [b"%d:" % i + b"y" * (i * 997 % 5000) for i in range(300)]
    bodies[7] = b"big" * 100_000  # past the broker's frame_max (128 KiB): several body frames
    bodies[8] = b""
    await asyncio.gather(*(transport.publish(queue_name, message(body)) for body in bodies))
    await eventually(lambda: _depth(transport, queue_name, 301))
    got = []
    while (delivery := await transport.get(queue_name)) is not None:
        got.append(delivery.body)
        await delivery.ack()
    assert sorted(got[1:]) == sorted(bodies)


async def test_publishes_without_a_message_id_mixed_into_a_batch_get_their_own_answers(
    transport: RabbitMQTransport, amqp_url: str, queue_name: str
) -> None:
    """A message with no id goes through the same frame writer (an id is made up for it, as
    aiormq would): a second publishing path on the channel could put a later delivery tag on
    the wire first, and the broker's confirms would then answer the wrong publishes. Here every
    id-less publish is nacked (its queue refuses everything) and every other one is acked."""
    refusing = f"{queue_name}.refusing"
    await transport.declare(queue_name)
    await transport.declare(refusing)
    connection = await aio_pika.connect(amqp_url)
    try:
        await asyncio.gather(transport.publish(queue_name, message()), transport.publish(refusing, message()))
        channel = await connection.channel()
        full = await channel.declare_queue(f"{refusing}.full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
        await full.bind(jobs_exchange(refusing), routing_key=refusing)
        sends = [
            transport.publish(refusing, OutgoingMessage(body=b"%d" % i, message_id="")) if i % 3 == 1
            else transport.publish(queue_name, message(b"%d" % i))
            for i in range(300)
        ]
        results = await asyncio.gather(*sends, return_exceptions=True)
        for i, result in enumerate(results):
            if i % 3 == 1:
                assert isinstance(result, PublishNotConfirmed) and "refused" in str(result), (i, result)
            else:
                assert result is None, (i, result)
        await eventually(lambda: _depth(transport, queue_name, 1 + 200))
        await full.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
        await delete_queues(amqp_url, refusing)


async def test_a_return_in_a_batch_fails_only_its_own_publish(
    transport: RabbitMQTransport, amqp_url: str, queue_name: str
) -> None:
    other = f"test.other.{uuid.uuid4().hex[:12]}"
    await transport.declare(queue_name)
    await transport.declare(other)
    try:
        await asyncio.gather(transport.publish(queue_name, message()), transport.publish(other, message()))
        await _unbind(amqp_url, other)  # its exchange stays, but routes nowhere: a basic.return
        sends = [transport.publish(other if i % 10 == 3 else queue_name, message()) for i in range(100)]
        results = await asyncio.gather(*sends, return_exceptions=True)
        for i, result in enumerate(results):
            if i % 10 == 3:
                assert isinstance(result, PublishNotConfirmed) and "unroutable" in str(result), result
            else:
                assert result is None, result
        await eventually(lambda: _depth(transport, queue_name, 91))
    finally:
        await delete_queues(amqp_url, other)


async def test_a_nack_in_a_batch_fails_only_its_own_publish(
    transport: RabbitMQTransport, amqp_url: str, queue_name: str
) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message())
    full = f"{queue_name}.full"
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        # A second queue on the same route that takes nothing: the broker nacks what routes to it.
        queue = await channel.declare_queue(full, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
        await queue.bind(jobs_exchange(queue_name), routing_key=queue_name)
        results = await asyncio.gather(*(transport.publish(queue_name, message()) for _ in range(20)),
                                       return_exceptions=True)
        assert all(isinstance(r, PublishNacked) and "refused" in str(r) for r in results), results
        await queue.delete(if_unused=False, if_empty=False)
        await asyncio.gather(*(transport.publish(queue_name, message()) for _ in range(20)))
        await eventually(lambda: _depth(transport, queue_name, 21 + 20))  # nacked, yet stored in the work queue
    finally:
        await connection.close()


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[FaultProxy]:
    target = urlsplit(amqp_url)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 5672) as running:
        yield running


def _jobs(queue: str) -> JobRegistry:
    jobs = JobRegistry()
    jobs.job("test.batch", queue=queue)(_handler)
    return jobs


async def test_publishes_in_flight_when_the_connection_is_cut_are_retried_and_none_lost(
    amqp_url: str, queue_name: str, proxy: FaultProxy
) -> None:
    transport = make_transport(proxy.rewrite_url(amqp_url), reconnect_interval=0.2, connect_timeout=5.0)
    try:
        async with Producer.for_registry(transport, _jobs(queue_name), confirm_timeout=3.0, publish_tries=6) as producer:
            await producer.publish("test.batch", {"n": -1})

            first = await asyncio.gather(*(producer.publish("test.batch", {"n": n}) for n in range(200)))
            # Hold the next 800 in the proxy (written by the client, never answered), then cut:
            # every one of them is in flight when the connection goes. Cutting at the 200th
            # confirm instead raced the broker, whose other 800 confirms were often read already.
            proxy.blackhole()
            rest = [asyncio.ensure_future(producer.publish("test.batch", {"n": n})) for n in range(200, COUNT)]
            await asyncio.sleep(0.3)
            cut = proxy.cut()
            proxy.restore()
            receipts = [*first, *await asyncio.gather(*rest)]
            assert cut == 2  # the publisher and the consumer connection
            assert len({r.job_id for r in receipts}) == COUNT
            retried = sum(r.tries > 1 for r in receipts)
            assert retried == COUNT - 200  # every held publish was in flight when the connection went
        async with make_transport(amqp_url) as direct:
            # At least once: a publish whose confirm was lost may be stored twice (same job id).
            ids: list[str] = []

            async def take(delivery: Delivery) -> None:
                ids.append(delivery.message_id)
                await delivery.ack()

            await eventually(lambda: _at_least(direct, queue_name, COUNT + 1))
            handle = await direct.consume(queue_name, take, prefetch=500)
            await eventually(lambda: len(ids) >= COUNT + 1)
            await asyncio.sleep(0.2)  # a duplicate would arrive too
            await handle.cancel()
        assert {r.job_id for r in receipts} <= set(ids)
        assert len(ids) - (COUNT + 1) <= retried  # a duplicate only where a publish was retried
    finally:
        await delete_queues(amqp_url, queue_name)


async def test_a_confirm_that_never_comes_is_an_unknown_outcome_and_the_next_publish_works(
    amqp_url: str, queue_name: str, proxy: FaultProxy
) -> None:
    transport = make_transport(proxy.rewrite_url(amqp_url), connect_timeout=5.0)
    try:
        async with Producer.for_registry(transport, _jobs(queue_name), confirm_timeout=0.3, publish_tries=1) as producer:
            await producer.publish("test.batch", {"n": 0})
            proxy.blackhole(1.0)  # the frames wait on the wire, so do their confirms
            results = await asyncio.gather(*(producer.publish("test.batch", {"n": i}) for i in range(50)),
                                           return_exceptions=True)
            assert all(isinstance(r, PublishOutcomeUnknown) for r in results), results
            await asyncio.sleep(1.2)
            receipt = await producer.publish("test.batch", {"n": 99})  # the same channel, answering again
            assert receipt.tries == 1
    finally:
        await delete_queues(amqp_url, queue_name)


async def test_a_closed_transport_refuses_to_publish(amqp_url: str, queue_name: str) -> None:
    t = make_transport(amqp_url)
    await t.connect()
    try:
        await t.declare(queue_name)
        await t.publish(queue_name, message())
    finally:
        await t.close()
    with pytest.raises(TransportError, match="not connected"):
        await t.publish(queue_name, message())
    await delete_queues(amqp_url, queue_name)


class Item(BaseModel):
    n: int


async def _handler(payload: Item, ctx: object) -> None:
    return None


async def _at_least(transport: RabbitMQTransport, queue: str, expected: int) -> bool:
    return await transport.depth(queue) >= expected


async def _unbind(url: str, queue: str) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(jobs_exchange(queue))
        q = await channel.get_queue(queue)
        await q.unbind(exchange, routing_key=queue)
    finally:
        await connection.close()
