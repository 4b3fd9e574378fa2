"""RabbitMQTransport against a real RabbitMQ (CONVEYOR_AMQP_URL; see conftest)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest
import yarl

from conveyor.common.errors import (
    AlreadySettled,
    ConfigurationError,
    PublishNotConfirmed,
    PublishOutcomeUnknown,
    TransportError,
)
from conveyor.common.transport.base import Delivery, OutgoingMessage
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.common.transport.rabbitmq.topology import REMAINING_DELAY, Topology, tier_queue
from tests.support.rabbitmq_admin import rabbitmqctl

pytestmark = pytest.mark.rabbitmq

TIERS = (1.0, 3.0)  # short tiers keep the delay tests fast


def message(body: bytes = b"x", *, delay: float = 0.0, **headers: str) -> OutgoingMessage:
    return OutgoingMessage(body=body, message_id=uuid.uuid4().hex, headers=headers, delay=delay)


async def eventually(check: Callable[[], Awaitable[bool] | bool], *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


async def delete_queues(url: str, queue: str) -> None:
    """Remove everything ``declare(queue)`` created, so a shared broker does not fill up."""
    names = [queue, f"{queue}.dlq", *(tier_queue(queue, t) for t in TIERS)]
    connection = await aio_pika.connect(url)
    try:
        for name in [*names, *(f"exchange:{x}" for x in Topology.create(TIERS, 1).exchanges(queue))]:
            channel = await connection.channel()
            try:
                if name.startswith("exchange:"):
                    await channel.exchange_delete(name.removeprefix("exchange:"))
                else:
                    await channel.queue_delete(name)
            except aio_pika.exceptions.AMQPError:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()


def make_transport(url: str, **kwargs: object) -> RabbitMQTransport:
    kwargs.setdefault("delay_tiers", TIERS)
    kwargs.setdefault("connect_timeout", 5.0)
    return RabbitMQTransport(url, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def transport(amqp_url: str, queue_name: str) -> AsyncIterator[RabbitMQTransport]:
    t = make_transport(amqp_url)
    await t.connect()
    try:
        yield t
    finally:
        await t.close()
        await delete_queues(amqp_url, queue_name)


class Collector:
    """A consumer handler that records deliveries (and when they arrived) without settling."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.arrived: list[float] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.arrived.append(time.monotonic())

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.deliveries]


# -- publish -----------------------------------------------------------------------------------


async def test_publish_is_confirmed_and_lands_in_the_queue(transport: RabbitMQTransport, queue_name: str) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message(b"one"))
    await transport.publish(queue_name, message(b"two"))
    await eventually(lambda: _depth_is(transport, queue_name, 2))


async def test_publish_to_an_undeclared_queue_raises_not_confirmed(transport: RabbitMQTransport, amqp_url: str) -> None:
    missing = f"test.missing.{uuid.uuid4().hex}"
    with pytest.raises(PublishNotConfirmed, match="unroutable"):
        await transport.publish(missing, message())
    # A delayed publish needs the queue's tiers, which do not exist either.
    with pytest.raises(PublishNotConfirmed):
        await transport.publish(missing, message(delay=1))
    # The publisher channel survives a returned message.
    await transport.declare(missing)
    try:
        await transport.publish(missing, message())
    finally:
        await delete_queues(amqp_url, missing)


async def test_a_missing_exchange_fails_only_its_own_publish(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    # A publish to a missing named exchange closes an AMQP channel (404): the first publish to
    # each exchange is probed on a channel of its own, so publishes in flight are unaffected.
    await transport.declare(queue_name)
    await transport.publish(queue_name, message(b"warm"))  # proven: later ones share the channel
    missing = f"test.missing.{uuid.uuid4().hex}"
    results = await asyncio.gather(
        *(transport.publish(queue_name, message(b"%d" % i)) for i in range(20)),
        transport.publish(missing, message(b"lost")),
        *(transport.publish(queue_name, message(b"%d" % i)) for i in range(20, 40)),
        return_exceptions=True,
    )
    refused = results.pop(20)
    assert isinstance(refused, PublishNotConfirmed) and f"no exchange '{missing}.jobs'" in str(refused)
    assert results == [None] * 40
    await eventually(lambda: _depth_is(transport, queue_name, 41))


async def test_an_exchange_deleted_after_use_fails_cleanly_and_the_transport_recovers(
    transport: RabbitMQTransport, amqp_url: str, queue_name: str
) -> None:
    other = f"test.other.{uuid.uuid4().hex[:12]}"
    await transport.declare(queue_name)
    await transport.declare(other)
    try:
        await transport.publish(queue_name, message())
        await transport.publish(other, message())
        await delete_queues(amqp_url, other)  # behind the transport's back
        # The shared channel is closed by the 404: which publish caused it is unknown there,
        # so the outcome is "unknown" (retry with the same id), and the retry names the cause.
        with pytest.raises(PublishOutcomeUnknown, match="closed the publisher channel"):
            await transport.publish(other, message())
        with pytest.raises(PublishNotConfirmed, match="no exchange"):
            await transport.publish(other, message())
        await transport.publish(queue_name, message())  # the robust channel is back
        await eventually(lambda: _depth_is(transport, queue_name, 2))
    finally:
        await delete_queues(amqp_url, other)


async def test_message_id_headers_and_body_round_trip(transport: RabbitMQTransport, queue_name: str) -> None:
    await transport.declare(queue_name)
    sent = message(b"\x00payload\xff", **{"x-conveyor-job-type": "send_email", "x-other": "1"})
    await transport.publish(queue_name, sent)
    got = await _get_eventually(transport, queue_name)
    assert got.body == sent.body
    assert got.message_id == sent.message_id
    assert got.headers == {"x-conveyor-job-type": "send_email", "x-other": "1"}
    assert (got.redelivered, got.delivery_count) == (False, 1)
    await got.ack()


async def test_messages_are_persistent(transport: RabbitMQTransport, queue_name: str, amqp_url: str) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message())
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        raw = await queue.get(no_ack=True, timeout=5)
        assert raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    finally:
        await connection.close()


# -- declare -----------------------------------------------------------------------------------


async def test_declare_is_idempotent(transport: RabbitMQTransport, queue_name: str) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message())
    await transport.declare(queue_name)
    await eventually(lambda: _depth_is(transport, queue_name, 1))
    assert await transport.depth(transport.dead_letter_queue(queue_name)) == 0
    for tier in TIERS:
        assert await transport.depth(tier_queue(queue_name, tier)) == 0


async def test_declare_with_other_settings_is_a_configuration_error(
    transport: RabbitMQTransport, amqp_url: str, queue_name: str
) -> None:
    await transport.declare(queue_name)
    other = make_transport(amqp_url, delivery_limit=3)
    async with other:
        with pytest.raises(ConfigurationError, match="x-delivery-limit"):
            await other.declare(queue_name)


async def test_depth_of_a_missing_queue_is_a_transport_error(transport: RabbitMQTransport) -> None:
    with pytest.raises(TransportError, match="no queue"):
        await transport.depth(f"test.missing.{uuid.uuid4().hex}")


# -- delays ------------------------------------------------------------------------------------


async def test_delayed_publish_arrives_after_its_delay(transport: RabbitMQTransport, queue_name: str) -> None:
    await transport.declare(queue_name)
    seen = Collector()
    handle = await transport.consume(queue_name, seen, prefetch=10)
    start = time.monotonic()
    await transport.publish(queue_name, message(b"later", delay=1.0))
    await eventually(lambda: _depth_is(transport, tier_queue(queue_name, 1.0), 1), timeout=0.9)
    await eventually(lambda: len(seen.deliveries) == 1, timeout=10)
    assert seen.arrived[0] - start >= 1.0
    assert seen.bodies == [b"later"]
    await seen.deliveries[0].ack()
    await handle.cancel()


async def test_short_delay_is_not_stuck_behind_a_longer_one(transport: RabbitMQTransport, queue_name: str) -> None:
    await transport.declare(queue_name)
    seen = Collector()
    handle = await transport.consume(queue_name, seen, prefetch=10)
    start = time.monotonic()
    await transport.publish(queue_name, message(b"3s", delay=3.0))
    await transport.publish(queue_name, message(b"1s", delay=1.0))
    await eventually(lambda: len(seen.deliveries) == 2, timeout=15)
    assert seen.bodies == [b"1s", b"3s"]
    assert seen.arrived[0] - start >= 1.0
    assert seen.arrived[1] - start >= 3.0
    assert seen.arrived[0] - start < 3.0  # it did not wait for the 3 s message
    for delivery in seen.deliveries:
        await delivery.ack()
    await handle.cancel()


async def test_delay_inside_a_tier_waits_its_own_delay_not_the_tiers(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    await transport.declare(queue_name)
    seen = Collector()
    await transport.consume(queue_name, seen, prefetch=10)
    start = time.monotonic()
    await transport.publish(queue_name, message(b"1.5s", delay=1.5))  # tier 3 s, expires at 1.5 s
    assert transport.topology.route(queue_name, 1.5) == (tier_queue(queue_name, 3.0), 1500)
    await eventually(lambda: len(seen.deliveries) == 1, timeout=10)
    assert 1.5 <= seen.arrived[0] - start < 2.9


async def test_within_a_tier_a_short_delay_waits_behind_the_head_at_most_the_tiers_ttl(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    """What the README says of tiers: TTL expires only at a queue's head, so in one tier a 1.5 s
    delay behind a 3 s one leaves with it, at 3 s (the tier's TTL), not at 1.5 s."""
    await transport.declare(queue_name)
    seen = Collector()
    await transport.consume(queue_name, seen, prefetch=10)
    start = time.monotonic()
    await transport.publish(queue_name, message(b"3s", delay=3.0))
    await transport.publish(queue_name, message(b"1.5s", delay=1.5))
    assert transport.topology.route(queue_name, 3.0)[0] == transport.topology.route(queue_name, 1.5)[0]
    await eventually(lambda: len(seen.deliveries) == 2, timeout=15)
    assert seen.bodies == [b"3s", b"1.5s"], "the head leaves first; the shorter delay waited behind it"
    assert 2.9 <= seen.arrived[1] - start < 4.5


async def test_a_delay_past_the_largest_tier_goes_round_again_and_arrives_once_unchanged(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    assert transport.topology.route(queue_name, 10.0) == (tier_queue(queue_name, 3.0), 3000)
    assert transport.topology.remaining(10.0) == 7000
    assert transport.topology.route(queue_name, 0.0) == (queue_name, None)
    assert transport.topology.route(queue_name, 0.2) == (tier_queue(queue_name, 1.0), 200)
    await transport.declare(queue_name)
    seen = Collector()
    await transport.consume(queue_name, seen, prefetch=10)
    start = time.monotonic()
    sent = message(b"long", delay=4.5, traceparent="00-abc-def-01", **{"x-conveyor-job-type": "t"})
    await transport.publish(queue_name, sent)  # 3 s tier, then 1.5 s more in a tier again
    await eventually(lambda: len(seen.deliveries) == 1, timeout=15)
    await asyncio.sleep(0.5)  # nothing else comes: the pass-on was no delivery of its own
    [delivery] = seen.deliveries
    assert seen.arrived[0] - start >= 4.5
    assert (delivery.body, delivery.message_id, delivery.delivery_count) == (b"long", sent.message_id, 1)
    assert delivery.headers["traceparent"] == "00-abc-def-01"
    assert delivery.headers["x-conveyor-job-type"] == "t"
    assert REMAINING_DELAY not in delivery.headers
    assert delivery.headers.get("x-first-death-reason") == "expired"  # the last tier's, as for any delay
    await delivery.ack()


async def test_a_remaining_delay_header_only_ever_makes_a_message_wait_longer(
    amqp_url: str, transport: RabbitMQTransport, queue_name: str
) -> None:
    """The header is a publisher's claim: honoured as a wait (up to MAX_DELAY), never as less."""
    await transport.declare(queue_name)
    seen = Collector()
    await transport.consume(queue_name, seen, prefetch=10)
    start = time.monotonic()
    # A sender's own header is dropped by publish: only a delay sets it.
    await transport.publish(queue_name, message(b"sender", **{REMAINING_DELAY: "60000"}))
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{queue_name}.jobs", ensure=False)
        for body, value in [(b"forged", "1500"), (b"junk", "soon"), (b"negative", "-60000"), (b"zero", "0")]:
            raw = aio_pika.Message(body, headers={REMAINING_DELAY: value}, message_id=body.decode())
            await exchange.publish(raw, routing_key=queue_name)
    finally:
        await connection.close()
    await eventually(lambda: len(seen.deliveries) == 5, timeout=15)
    arrived = {d.body: at - start for d, at in zip(seen.deliveries, seen.arrived, strict=True)}
    assert max(arrived[b] for b in (b"sender", b"junk", b"negative", b"zero")) < 1.0
    assert arrived[b"forged"] >= 1.5
    for delivery in seen.deliveries:
        await delivery.ack()


# -- settlement and redelivery -----------------------------------------------------------------


async def test_unsettled_delivery_is_redelivered_to_another_connection(
    amqp_url: str, transport: RabbitMQTransport, queue_name: str
) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message(b"crash"))
    first = make_transport(amqp_url)
    await first.connect()
    seen = Collector()
    await first.consume(queue_name, seen, prefetch=1)
    await eventually(lambda: len(seen.deliveries) == 1)
    assert (seen.deliveries[0].redelivered, seen.deliveries[0].delivery_count) == (False, 1)
    await first.close()  # the "crash": never settled

    again = await _get_eventually(transport, queue_name)
    assert again.body == b"crash"
    assert again.redelivered is True
    assert again.delivery_count == 2
    await again.ack()


async def test_unsettled_get_is_returned_when_the_transport_closes(
    amqp_url: str, transport: RabbitMQTransport, queue_name: str
) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message(b"held"))
    other = make_transport(amqp_url)
    async with other:
        held = await _get_eventually(other, queue_name)
        assert held.body == b"held"
        assert await transport.get(queue_name) is None
    back = await _get_eventually(transport, queue_name)
    assert (back.body, back.redelivered, back.delivery_count) == (b"held", True, 2)
    await back.ack()


async def test_ack_twice_raises_already_settled(transport: RabbitMQTransport, queue_name: str) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message())
    delivery = await _get_eventually(transport, queue_name)
    await delivery.ack()
    with pytest.raises(AlreadySettled):
        await delivery.ack()
    with pytest.raises(AlreadySettled):
        await delivery.release()
    assert await transport.get(queue_name) is None


async def test_get_on_an_empty_queue_returns_none(transport: RabbitMQTransport, queue_name: str) -> None:
    await transport.declare(queue_name)
    assert await transport.get(queue_name) is None


async def test_get_from_a_missing_queue_keeps_held_deliveries(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message())
    held = await _get_eventually(transport, queue_name)
    with pytest.raises(TransportError, match="no queue"):
        await transport.get(f"test.missing.{uuid.uuid4().hex}")
    await held.ack()  # still ackable: the get channel was not closed by a 404
    assert await transport.get(queue_name) is None


async def test_release_puts_the_message_back(transport: RabbitMQTransport, queue_name: str) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message(b"again"))
    delivery = await _get_eventually(transport, queue_name)
    await delivery.release()
    await eventually(lambda: _depth_is(transport, queue_name, 1))
    back = await _get_eventually(transport, queue_name)
    assert (back.body, back.message_id) == (b"again", delivery.message_id)
    assert back.delivery_count == 2
    await back.ack()


async def test_delivery_limit_dead_letters_a_crash_looping_message(
    amqp_url: str, queue_name: str
) -> None:
    limited = make_transport(amqp_url, delivery_limit=2)
    try:
        async with limited:
            await limited.declare(queue_name)
            await limited.publish(queue_name, message(b"loop"))
            for _ in range(3):  # delivered 3 times with a limit of 2: the third return is one too many
                delivery = await _get_eventually(limited, queue_name)
                await delivery.release()
            dlq = limited.dead_letter_queue(queue_name)
            await eventually(lambda: _depth_is(limited, dlq, 1))
            assert await limited.depth(queue_name) == 0
            dead = await _get_eventually(limited, dlq)
            assert dead.body == b"loop"
            assert dead.headers.get("x-first-death-reason") == "delivery_limit"
            await dead.ack()
    finally:
        await delete_queues(amqp_url, queue_name)


# -- consumers ---------------------------------------------------------------------------------


async def test_consumer_holds_at_most_prefetch_unsettled(transport: RabbitMQTransport, queue_name: str) -> None:
    await transport.declare(queue_name)
    for i in range(5):
        await transport.publish(queue_name, message(str(i).encode()))
    seen = Collector()
    await transport.consume(queue_name, seen, prefetch=2)
    await eventually(lambda: len(seen.deliveries) == 2)
    await asyncio.sleep(0.3)
    assert len(seen.deliveries) == 2
    await seen.deliveries[0].ack()
    await eventually(lambda: len(seen.deliveries) == 3)
    assert seen.bodies == [b"0", b"1", b"2"]


async def test_acks_and_a_release_in_one_loop_turn_settle_each_message_as_asked(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    # The consumer coalesces a loop turn's acks into one multiple ack: the released message in
    # the middle must come back, the acked ones on both sides of it must not, and nothing may
    # close the channel (an ack for a tag already covered would).
    await transport.declare(queue_name)
    for i in range(8):
        await transport.publish(queue_name, message(str(i).encode()))
    seen = Collector()
    handle = await transport.consume(queue_name, seen, prefetch=8)
    await eventually(lambda: len(seen.deliveries) == 8)
    await asyncio.gather(*(d.release() if d.body == b"3" else d.ack() for d in seen.deliveries))
    await eventually(lambda: len(seen.deliveries) == 9)
    back = seen.deliveries[8]
    assert (back.body, back.delivery_count) == (b"3", 2)
    await back.ack()
    await asyncio.sleep(0.3)
    assert len(seen.deliveries) == 9
    assert handle.attached  # the channel survived every frame
    await handle.cancel()
    assert await transport.depth(queue_name) == 0


async def test_cancel_stops_new_deliveries_and_keeps_held_ones(
    transport: RabbitMQTransport, queue_name: str
) -> None:
    await transport.declare(queue_name)
    await transport.publish(queue_name, message(b"held"))
    seen = Collector()
    handle = await transport.consume(queue_name, seen, prefetch=5)
    await eventually(lambda: len(seen.deliveries) == 1)
    assert handle.attached
    await handle.cancel()
    assert not handle.attached
    await transport.publish(queue_name, message(b"new"))
    await asyncio.sleep(0.3)
    assert seen.bodies == [b"held"]
    await seen.deliveries[0].ack()  # the held delivery is still ours to settle
    await eventually(lambda: _depth_is(transport, queue_name, 1))


async def test_consumer_reattaches_after_the_broker_closes_the_connection(
    amqp_url: str, queue_name: str
) -> None:
    # Through a proxy that refuses reconnects until told: the robust connection would otherwise
    # be back within milliseconds, too fast to observe `attached` turning False.
    proxy = CuttableProxy(amqp_url)
    await proxy.start()
    # A unique connection name lets us close only our own connections: other test runs may
    # share this broker.
    name = f"conveyor-test-{uuid.uuid4().hex[:8]}"
    t = make_transport(proxy.url, connection_name=name, reconnect_interval=0.2, connect_timeout=1.0)
    try:
        async with t:
            await _check_recovery(t, proxy, queue_name, lambda: close_broker_connections(name))
    finally:
        await proxy.stop()
        await delete_queues(amqp_url, queue_name)


async def test_consumer_reattaches_after_the_tcp_connection_is_cut(amqp_url: str, queue_name: str) -> None:
    proxy = CuttableProxy(amqp_url)
    await proxy.start()
    t = make_transport(proxy.url, reconnect_interval=0.2, connect_timeout=1.0)
    try:
        async with t:

            async def cut() -> int:
                return proxy.cut()

            await _check_recovery(t, proxy, queue_name, cut)
    finally:
        await proxy.stop()
        await delete_queues(amqp_url, queue_name)


async def _check_recovery(
    t: RabbitMQTransport, proxy: CuttableProxy, queue_name: str, disconnect: Callable[[], Awaitable[int]]
) -> None:
    """Consume, disconnect, see ``attached`` go False then True, and consume again."""
    await t.declare(queue_name)
    seen = Collector()
    handle = await t.consume(queue_name, seen, prefetch=5)
    assert handle.attached
    await t.publish(queue_name, message(b"before"))
    await eventually(lambda: len(seen.deliveries) == 1)
    await seen.deliveries[0].ack()
    # A round trip on the same connection: once it is answered, the broker has read the ack
    # (an ack still in flight when the connection dies is lost, and the message comes back).
    await t.depth(queue_name)

    proxy.refuse = True  # the "broker" stays unreachable until we say so
    assert await disconnect() == 2  # the publisher and the consumer connection
    await eventually(lambda: not handle.attached, timeout=10)
    await asyncio.sleep(0.5)  # a few failed reconnect attempts
    assert not handle.attached
    with pytest.raises(TransportError):
        await t.depth(queue_name)  # waits connect_timeout for the connection, then gives up
    proxy.refuse = False
    await eventually(lambda: handle.attached, timeout=30)

    # Both connections are back: publishing and consuming work again.
    await t.publish(queue_name, message(b"after"))
    await eventually(lambda: len(seen.deliveries) == 2, timeout=10)
    assert seen.bodies == [b"before", b"after"]
    await seen.deliveries[1].ack()


async def test_errors_never_show_the_password(amqp_url: str) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex[:6]
    user_part, _, host_part = amqp_url.partition("://")[2].rpartition("@")
    bad = f"amqp://{user_part.partition(':')[0]}:{secret}@{host_part}"
    t = RabbitMQTransport(bad, connect_timeout=5)
    with pytest.raises(TransportError) as caught:
        await t.connect()
    assert secret not in str(caught.value)
    assert secret not in repr(t)
    assert "***" in str(caught.value)


async def test_unreachable_broker_is_a_transport_error() -> None:
    t = RabbitMQTransport("amqp://u:p@127.0.0.1:1/", connect_timeout=2)
    with pytest.raises(TransportError, match="cannot connect"):
        await t.connect()


# -- helpers -----------------------------------------------------------------------------------


async def _depth_is(transport: RabbitMQTransport, queue: str, expected: int) -> bool:
    return await transport.depth(queue) == expected


async def _get_eventually(transport: RabbitMQTransport, queue: str, timeout: float = 10.0) -> Delivery:
    got: list[Delivery] = []

    async def fetched() -> bool:
        delivery = await transport.get(queue)
        if delivery is not None:
            got.append(delivery)
        return bool(got)

    await eventually(fetched, timeout=timeout)
    return got[0]


async def close_broker_connections(connection_name: str) -> int:
    """Have the broker close our transport's connections (``rabbitmqctl close_connection``).

    Only connections whose client-provided name starts with ``connection_name`` are closed,
    unlike ``close_all_connections``. The command is the test node's own
    (``scripts/services/rabbitmq.sh ctl``, see ``tests.support.rabbitmq_admin``).
    """
    listing = await rabbitmqctl("list_connections", "pid", "client_properties")
    pids = [
        line.split("\t", 1)[0]
        for line in listing.splitlines()
        if f'{{"connection_name","{connection_name}:' in line
    ]
    for pid in pids:
        await rabbitmqctl("close_connection", pid, "test")
    return len(pids)


class CuttableProxy:
    """A TCP proxy in front of the broker whose connections can be cut (reset) at will."""

    def __init__(self, amqp_url: str) -> None:
        self._target = yarl.URL(amqp_url)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = amqp_url
        self.refuse = False  # True: reset new connections at once (the broker is "down")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = str(self._target.with_host("127.0.0.1").with_port(port))

    def cut(self) -> int:
        """Abort every proxied connection (both sides see a reset); returns how many."""
        clients = [w for w in self._writers if getattr(w, "is_client", False)]
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        return len(clients)

    async def stop(self) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        host, port = self._target.host or "127.0.0.1", self._target.port or 5672
        up_reader, up_writer = await asyncio.open_connection(host, port)
        writer.is_client = True  # type: ignore[attr-defined]
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()


# -- deliveries per event-loop turn --------------------------------------------------------


async def test_a_backlog_is_taken_many_deliveries_per_loop_turn(transport: RabbitMQTransport, queue_name: str) -> None:
    """aiormq queues at most 10 frames per channel by default (3⅓ deliveries), so a worker took
    3 or 4 deliveries per loop turn and paid its per-turn costs (coalesced ack, socket write)
    for every 3 jobs. The consumer channel has room for its whole prefetch window instead."""
    prefetch = 150
    await transport.declare(queue_name)
    for i in range(prefetch):
        await transport.publish(queue_name, message(str(i).encode()))
    turn = 0

    async def ticker() -> None:  # one step per loop turn
        nonlocal turn
        while True:
            turn += 1
            await asyncio.sleep(0)

    turns: list[int] = []

    async def record(delivery: Delivery) -> None:
        turns.append(turn)  # handlers started in the same turn were handed over in the same turn

    ticking = asyncio.get_running_loop().create_task(ticker())
    try:
        await transport.consume(queue_name, record, prefetch=prefetch)
        await eventually(lambda: len(turns) == prefetch)
    finally:
        ticking.cancel()
    biggest = max(turns.count(t) for t in set(turns))
    assert biggest > 10, f"at most {biggest} deliveries were handed over in one loop turn"
