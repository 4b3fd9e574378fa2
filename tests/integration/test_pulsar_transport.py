"""PulsarTransport against a real Pulsar broker (CONVEYOR_PULSAR_URL; see conftest)."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from conveyor.common.errors import AlreadySettled, ConfigurationError, PublishNotConfirmed, TransportError
from conveyor.common.transport.base import Delivery, OutgoingMessage
from conveyor.common.transport.pulsar import PulsarTransport

pytestmark = pytest.mark.pulsar


def message(body: bytes = b"x", *, delay: float = 0.0, key: str | None = None, **headers: str) -> OutgoingMessage:
    return OutgoingMessage(body=body, message_id=uuid.uuid4().hex, headers=headers, delay=delay, ordering_key=key)


async def eventually(check: Callable[[], Awaitable[bool] | bool], *, timeout: float = 20.0) -> None:
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


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    """A topic no other test (or concurrent run) uses; Pulsar names allow no brackets."""
    return f"test.{re.sub(r'[^A-Za-z0-9_.-]', '_', request.node.name)[:40]}.{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def open_transport(pulsar_url: str, queue: str) -> AsyncIterator[Callable[..., Awaitable[PulsarTransport]]]:
    """Connected transports (separate clients, as separate processes would have); cleaned up."""
    opened: list[PulsarTransport] = []

    async def factory(**kwargs: object) -> PulsarTransport:
        transport = PulsarTransport(pulsar_url, **kwargs)  # type: ignore[arg-type]
        await transport.connect()
        opened.append(transport)
        return transport

    yield factory
    for transport in reversed(opened):
        await transport.close()
    async with PulsarTransport(pulsar_url) as cleaner:
        await cleaner.delete(queue)


@pytest.fixture
async def transport(open_transport: Callable[..., Awaitable[PulsarTransport]]) -> PulsarTransport:
    return await open_transport()


async def _get_eventually(transport: PulsarTransport, queue: str) -> Delivery:
    for _ in range(20):
        delivery = await transport.get(queue)
        if delivery is not None:
            return delivery
    raise AssertionError(f"nothing to get from {queue!r}")


# -- publish -----------------------------------------------------------------------------------


async def test_publish_is_confirmed_and_survives_until_a_worker_subscribes(transport: PulsarTransport, queue: str) -> None:
    await transport.declare(queue)
    # No consumer exists yet: only the durable subscription declare() made keeps these.
    await transport.publish(queue, message(b"one"))
    await transport.publish(queue, message(b"two"))
    assert await transport.depth(queue) == 2  # confirmed means stored: no waiting needed
    got = [await _get_eventually(transport, queue) for _ in range(2)]
    assert sorted(d.body for d in got) == [b"one", b"two"]
    for delivery in got:
        await delivery.ack()


async def test_message_id_headers_and_body_round_trip(transport: PulsarTransport, queue: str) -> None:
    await transport.declare(queue)
    sent = message(b"\x00payload\xff", **{"x-conveyor-job-type": "send_email", "x-other": "1"})
    await transport.publish(queue, sent)
    got = await _get_eventually(transport, queue)
    assert got.body == sent.body
    assert got.message_id == sent.message_id
    assert got.headers == {"x-conveyor-job-type": "send_email", "x-other": "1"}
    assert (got.redelivered, got.delivery_count) == (False, 1)
    await got.ack()
    with pytest.raises(AlreadySettled):
        await got.release()


async def test_many_more_concurrent_publishes_than_the_send_window_are_all_confirmed(
    open_transport: Callable[..., Awaitable[PulsarTransport]], queue: str
) -> None:
    # A window of 2: 60 publishes at once wait their turn instead of overfilling the client's
    # queue (ProducerQueueIsFull); the ones cancelled while waiting give no slot away.
    transport = await open_transport(max_pending_sends=2)
    await transport.declare(queue)
    waiting = [asyncio.create_task(transport.publish(queue, message(b"gone"))) for _ in range(5)]
    sent = [message(str(i).encode()) for i in range(60)]
    publishes = [asyncio.create_task(transport.publish(queue, m)) for m in sent]
    await asyncio.sleep(0)
    for task in waiting[2:]:  # the first two hold the window; these three queue behind them
        task.cancel()
    await asyncio.gather(*publishes)
    await asyncio.gather(*waiting, return_exceptions=True)
    stored = 60 + sum(1 for task in waiting if not task.cancelled())
    assert await transport.depth(queue) == stored
    await transport.publish(queue, message(b"after"))  # the window is whole again
    assert await transport.depth(queue) == stored + 1


async def test_publish_after_delete_and_declare_uses_a_new_producer(transport: PulsarTransport, queue: str) -> None:
    await transport.declare(queue)
    await transport.publish(queue, message(b"before"))
    await transport.delete(queue)
    await transport.declare(queue)
    await transport.publish(queue, message(b"after"))  # not the closed producer of the deleted topic
    got = await _get_eventually(transport, queue)
    assert (got.body, await transport.depth(queue)) == (b"after", 0)
    await got.ack()


async def test_publish_to_an_undeclared_queue_is_refused_and_creates_nothing(
    transport: PulsarTransport, queue: str
) -> None:
    with pytest.raises(PublishNotConfirmed, match="unroutable"):
        await transport.publish(queue, message())
    with pytest.raises(TransportError, match="no queue"):
        await transport.depth(queue)  # Pulsar would have auto-created the topic and dropped the message
    with pytest.raises(TransportError, match="no queue"):
        await transport.get(queue)
    await transport.declare(queue)
    await transport.publish(queue, message())  # a refused publish does not poison the producer cache
    assert await transport.depth(queue) == 1


async def test_a_message_over_the_broker_limit_is_not_confirmed(transport: PulsarTransport, queue: str) -> None:
    await transport.declare(queue)
    with pytest.raises(PublishNotConfirmed):
        await transport.publish(queue, message(b"x" * (6 * 1024 * 1024)))  # maxMessageSize is 5 MiB
    await transport.publish(queue, message(b"small"))
    assert await transport.depth(queue) == 1


async def test_a_refused_message_in_a_burst_of_sends_fails_alone(transport: PulsarTransport, queue: str) -> None:
    # 150 publishes in one loop turn reach the client in bursts (pulsar.sends); the one over the
    # limit in the middle of a burst is refused, every other one is confirmed and stored once.
    await transport.declare(queue)
    bodies = [b"x" * (6 * 1024 * 1024) if i == 70 else str(i).encode() for i in range(150)]
    results = await asyncio.gather(*(transport.publish(queue, message(b)) for b in bodies), return_exceptions=True)
    assert isinstance(results[70], PublishNotConfirmed)
    assert all(r is None for i, r in enumerate(results) if i != 70)
    assert await transport.depth(queue) == 149


# -- delays ------------------------------------------------------------------------------------


async def test_deliver_after_is_honoured_never_early(transport: PulsarTransport, queue: str) -> None:
    await transport.declare(queue)
    collector = Collector()
    await transport.consume(queue, collector, prefetch=10)
    sent_at = time.monotonic()
    await transport.publish(queue, message(b"late", delay=2.0))
    await transport.publish(queue, message(b"soon", delay=0.5))
    await transport.publish(queue, message(b"now"))
    await eventually(lambda: len(collector.deliveries) == 3, timeout=30)
    arrival = {d.body: at - sent_at for d, at in zip(collector.deliveries, collector.arrived, strict=True)}
    assert collector.bodies == [b"now", b"soon", b"late"]
    assert arrival[b"soon"] >= 0.5 and arrival[b"late"] >= 2.0, f"delivered early: {arrival}"
    assert arrival[b"late"] < 15, f"a 2 s delay took {arrival[b'late']:.1f}s"
    for delivery in collector.deliveries:
        await delivery.ack()


async def test_stats_count_delayed_apart_from_ready(transport: PulsarTransport, queue: str) -> None:
    await transport.declare(queue)
    await transport.publish(queue, message(b"later", delay=60))
    await transport.publish(queue, message(b"a"))
    # Without a consumer the broker has not read the delayed message yet: it counts as ready.
    assert await transport.depth(queue) == 2
    held = Collector()
    await transport.consume(queue, held, prefetch=5)
    await eventually(lambda: len(held.deliveries) == 1)

    async def settled_stats() -> bool:
        stats = await transport.stats(queue)
        return (stats.ready, stats.delayed, stats.consumers, stats.dead_letters) == (0, 1, 1, 0)

    await eventually(settled_stats)
    assert held.bodies == [b"a"]


# -- consume -----------------------------------------------------------------------------------


async def test_prefetch_bounds_unsettled_deliveries(transport: PulsarTransport, queue: str) -> None:
    await transport.declare(queue)
    for i in range(10):
        await transport.publish(queue, message(b"%d" % i))
    collector = Collector()
    await transport.consume(queue, collector, prefetch=3)
    await eventually(lambda: len(collector.deliveries) == 3)
    await asyncio.sleep(0.5)
    assert len(collector.deliveries) == 3
    await collector.deliveries[0].ack()
    await eventually(lambda: len(collector.deliveries) == 4)


async def test_unsettled_deliveries_of_a_closed_connection_go_to_the_other_consumers(
    open_transport: Callable[..., Awaitable[PulsarTransport]], queue: str
) -> None:
    crashing, survivor = await open_transport(), await open_transport()
    await crashing.declare(queue)
    for i in range(4):
        await crashing.publish(queue, message(b"%d" % i))
    held = Collector()
    await crashing.consume(queue, held, prefetch=4)
    await eventually(lambda: len(held.deliveries) == 4)
    collector = Collector()
    await survivor.consume(queue, collector, prefetch=10)
    await asyncio.sleep(0.5)
    assert collector.deliveries == []  # a Shared subscription: what one consumer holds is its own
    await crashing.close()  # the process "dies": its connection goes away with 4 unacked
    await eventually(lambda: len(collector.deliveries) == 4)
    assert sorted(collector.bodies) == [b"0", b"1", b"2", b"3"]
    # Unlike a release (nack), a take-back from a closed consumer is not counted by the broker.
    assert all(d.delivery_count == 1 for d in collector.deliveries)
    with pytest.raises(TransportError):
        await held.deliveries[0].ack()  # too late: the broker has given it to someone else


_CRASHING_CONSUMER = """
import asyncio, sys
from conveyor.common.transport.pulsar import PulsarTransport

async def main(url, queue, n):
    transport = PulsarTransport(url)
    await transport.connect()
    acked = 0

    async def handle(delivery):
        nonlocal acked
        if int(delivery.body) % 2 == 0:
            await delivery.ack()  # the client answers at once (grouped acks): no loop turn
            acked += 1
            if acked == n // 2:
                await asyncio.sleep(0.5)  # past the client's 100 ms ack grouping
                print("ACKED", flush=True)
        # odd ones: held, never settled

    await transport.consume(queue, handle, prefetch=n)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_acks_answered_at_once_stay_acked_and_held_deliveries_come_back_after_kill_9(
    open_transport: Callable[..., Awaitable[PulsarTransport]], queue: str, pulsar_url: str
) -> None:
    """A worker process killed (SIGKILL: no close, no flush) after acking half its deliveries:
    the other consumer gets exactly the held half; nothing acked (and flushed) comes back."""
    n = 20
    survivor = await open_transport()
    await survivor.declare(queue)
    for i in range(n):
        await survivor.publish(queue, message(b"%d" % i))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_CONSUMER, pulsar_url, queue, str(n),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.strip() == b"ACKED"
        collector = Collector()
        await survivor.consume(queue, collector, prefetch=n)
        await asyncio.sleep(0.5)
        assert collector.deliveries == []  # the child holds the odd ones while it lives
    finally:
        child.kill()
        await child.wait()
    await eventually(lambda: len(collector.deliveries) >= n // 2)
    await asyncio.sleep(1.0)  # anything acked that wrongly came back would arrive meanwhile
    assert sorted(int(b) for b in collector.bodies) == list(range(1, n, 2))
    for delivery in collector.deliveries:
        await delivery.ack()


async def test_release_comes_back_after_the_short_nack_delay(transport: PulsarTransport, queue: str) -> None:
    await transport.declare(queue)
    await transport.publish(queue, message(b"again"))
    collector = Collector()
    await transport.consume(queue, collector, prefetch=2)
    await eventually(lambda: len(collector.deliveries) == 1)
    released_at = time.monotonic()
    await collector.deliveries[0].release()
    await eventually(lambda: len(collector.deliveries) == 2, timeout=10)
    back_after = collector.arrived[1] - released_at
    assert 0.4 <= back_after < 8, f"released message came back after {back_after:.2f}s (nack_delay 0.5s)"
    assert collector.deliveries[1].delivery_count == 2


async def test_a_delivery_held_past_the_clients_shortest_ack_timeout_is_not_taken_back(
    transport: PulsarTransport, queue: str
) -> None:
    """No ack timeout (the client's is off unless set; its shortest is 10 s): a long job keeps
    its message, unlike RabbitMQ's consumer timeout, and nothing it shares a consumer with is
    redelivered."""
    await transport.declare(queue)
    await transport.publish(queue, message(b"long job"))
    collector = Collector()
    await transport.consume(queue, collector, prefetch=2)
    await eventually(lambda: len(collector.deliveries) == 1)
    await asyncio.sleep(12)
    assert collector.bodies == [b"long job"]
    await collector.deliveries[0].ack()


async def test_a_deferred_copy_reaches_another_consumer(
    open_transport: Callable[..., Awaitable[PulsarTransport]], queue: str
) -> None:
    """A worker that cannot run a job republishes it delayed; another worker must get it.

    Pulsar 4.0 alone would send every delayed copy back to the same one of two consumers
    half of the time (see PulsarTransport's notes); the transport passes its own copies on.
    """
    old, new = await open_transport(), await open_transport()
    await old.declare(queue)
    hops: collections.Counter[bytes] = collections.Counter()
    taken: list[bytes] = []

    async def defer(delivery: Delivery) -> None:
        hops[delivery.body] += 1
        copy = OutgoingMessage(body=delivery.body, message_id=delivery.message_id, delay=0.2)
        await old.publish(queue, copy)
        await delivery.ack()

    async def take(delivery: Delivery) -> None:
        taken.append(delivery.body)
        await delivery.ack()

    # This order made the broker alone send every copy back to `old` (measured: 17 hops for the
    # first job, until the next job's traffic shifted the round robin).
    await new.consume(queue, take, prefetch=4)
    await old.consume(queue, defer, prefetch=4)
    for n in range(3):  # one at a time: only delayed traffic, the case that goes wrong
        body = b"job-%d" % n
        await old.publish(queue, message(body, delay=0.2))
        await eventually(lambda body=body: body in taken, timeout=30)
    assert taken == [b"job-0", b"job-1", b"job-2"]
    assert all(count <= 6 for count in hops.values()), f"deferred copies looped: {hops}"


async def test_cancel_stops_new_deliveries_and_held_ones_stay_settleable(
    open_transport: Callable[..., Awaitable[PulsarTransport]], queue: str
) -> None:
    transport = await open_transport()
    await transport.declare(queue)
    collector = Collector()
    handle = await transport.consume(queue, collector, prefetch=1)
    await eventually(lambda: handle.attached)
    await transport.publish(queue, message(b"first"))
    await eventually(lambda: len(collector.deliveries) == 1)
    await handle.cancel()
    assert not handle.attached
    await transport.publish(queue, message(b"second"))
    await asyncio.sleep(0.5)
    assert collector.bodies == [b"first"]
    await collector.deliveries[0].ack()  # still settleable after cancel
    other = Collector()
    await (await open_transport()).consume(queue, other, prefetch=5)
    await eventually(lambda: other.bodies == [b"second"])


async def test_key_shared_keeps_per_key_order_across_consumers(
    open_transport: Callable[..., Awaitable[PulsarTransport]], queue: str
) -> None:
    order: dict[str, list[int]] = collections.defaultdict(list)
    owners: dict[str, set[int]] = collections.defaultdict(set)
    in_flight: collections.Counter[str] = collections.Counter()

    def handler_for(consumer: int) -> Callable[[Delivery], Awaitable[None]]:
        async def handle(delivery: Delivery) -> None:
            key, n = delivery.body.decode().split(":")
            in_flight[key] += 1
            assert in_flight[key] == 1, f"two messages of key {key} ran at once"
            await asyncio.sleep(random.uniform(0, 0.03))
            order[key].append(int(n))
            owners[key].add(consumer)
            in_flight[key] -= 1
            await delivery.ack()

        return handle

    first = await open_transport(subscription_type="key_shared")
    second = await open_transport(subscription_type="key_shared")
    await first.declare(queue)
    await first.consume(queue, handler_for(1), prefetch=8)
    await second.consume(queue, handler_for(2), prefetch=8)
    keys = [f"k{i}" for i in range(6)]
    for n in range(20):
        for key in keys:
            await first.publish(queue, message(f"{key}:{n}".encode(), key=key))
    await eventually(lambda: sum(len(v) for v in order.values()) == 120, timeout=60)
    for key in keys:
        assert order[key] == list(range(20)), f"key {key} out of order: {order[key]}"
        assert len(owners[key]) == 1, f"key {key} was spread over consumers {owners[key]}"


async def test_a_key_shared_transport_cannot_join_a_busy_shared_subscription(
    open_transport: Callable[..., Awaitable[PulsarTransport]], queue: str
) -> None:
    shared = await open_transport()
    await shared.declare(queue)
    await shared.consume(queue, Collector(), prefetch=1)
    keyed = await open_transport(subscription_type="key_shared")
    with pytest.raises(ConfigurationError, match="another type"):
        await keyed.consume(queue, Collector(), prefetch=1)


# -- get / DLQ ---------------------------------------------------------------------------------


async def test_dead_letter_queue_is_the_dlq_topic_and_declare_makes_it_durable(
    open_transport: Callable[..., Awaitable[PulsarTransport]], queue: str
) -> None:
    transport = await open_transport()
    dlq = transport.dead_letter_queue(queue)
    assert dlq == f"{queue}-DLQ"
    await transport.declare(queue)
    admin = transport._admin_client()
    assert await admin.subscriptions(transport.names.rest_path(dlq)) == ["conveyor"]
    await transport.publish(dlq, message(b"dead"))
    reader = await open_transport()  # another process, e.g. `conveyor dlq list`
    got = await _get_eventually(reader, dlq)
    assert got.body == b"dead"
    assert (await transport.stats(queue)).dead_letters == 1


async def test_get_loses_nothing_across_empty_waits(transport: PulsarTransport, queue: str) -> None:
    """A cancelled ``receive()`` swallows the next message; ``get`` must never lose one that way."""
    await transport.declare(queue)
    for _ in range(3):
        assert await transport.get(queue) is None
    await transport.publish(queue, message(b"m1"))
    held = await _get_eventually(transport, queue)  # held: the browsing consumer stays open…
    assert await transport.get(queue) is None  # …with its receive pending across this empty wait
    await transport.publish(queue, message(b"m2"))
    await transport.publish(queue, message(b"m3"))
    later = [await _get_eventually(transport, queue), await _get_eventually(transport, queue)]
    assert [held.body, *(d.body for d in later)] == [b"m1", b"m2", b"m3"]
    assert await transport.get(queue) is None
    for delivery in (held, *later):
        await delivery.ack()

    async def drained() -> bool:  # the client groups acks (up to 100 ms) before the broker counts them
        return await transport.depth(queue) == 0

    await eventually(drained)


async def test_released_and_unsettled_gets_are_back_for_the_next_reader(
    open_transport: Callable[..., Awaitable[PulsarTransport]], queue: str
) -> None:
    first = await open_transport()
    await first.declare(queue)
    for i in range(3):
        await first.publish(queue, message(b"%d" % i))
    taken = [await _get_eventually(first, queue) for _ in range(3)]
    assert await first.get(queue) is None
    await taken[0].release()
    await taken[1].ack()
    await first.close()  # taken[2] was never settled: the broker takes it back
    second = await open_transport()
    again = sorted([(await _get_eventually(second, queue)).body for _ in range(2)])
    assert again == [b"0", b"2"]
    assert await second.get(queue) is None


async def test_get_from_a_full_queue_returns_everything_in_one_scan(transport: PulsarTransport, queue: str) -> None:
    await transport.declare(queue)
    for i in range(50):
        await transport.publish(queue, message(b"%d" % i))
    scanned: list[Delivery] = []
    while (delivery := await transport.get(queue)) is not None:
        scanned.append(delivery)
    assert sorted(int(d.body) for d in scanned) == list(range(50))
    for delivery in scanned:
        await delivery.release()


# -- lifecycle ---------------------------------------------------------------------------------


async def test_delete_removes_the_topics(transport: PulsarTransport, queue: str) -> None:
    await transport.declare(queue)
    await transport.publish(queue, message())
    await transport.delete(queue)
    with pytest.raises(TransportError, match="no queue"):
        await transport.depth(queue)
    with pytest.raises(TransportError, match="no queue"):
        await transport.depth(transport.dead_letter_queue(queue))


async def test_an_unreachable_broker_is_a_transport_error_without_the_token() -> None:
    transport = PulsarTransport("pulsar://127.0.0.1:1/?token=hunter2", connect_timeout=2, operation_timeout=2)
    with pytest.raises(TransportError) as caught:
        await transport.connect()
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(transport)
