"""Pulsar service URLs with several hosts (``pulsar://h1:6650,h2:6650``) against the real broker.

There is one standalone broker here, so the "hosts" are two FaultProxy ports in front of it:
one refuses (a dead broker) while the client works through the other. What a proxy sees is the
client's *lookups*: the client then connects to the address the broker advertises (its own
6650), as it would to the owner of a topic in a real cluster. A broker restart behind a
multi-host URL is not tested here: the shared broker is not ours to restart.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from conveyor.common.transport.base import Delivery, OutgoingMessage
from conveyor.common.transport.pulsar import PulsarTransport
from conveyor.common.transport.pulsar.admin import parse_pulsar_url
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.pulsar


@pytest.fixture
async def proxies(pulsar_url: str) -> AsyncIterator[tuple[FaultProxy, FaultProxy]]:
    target = urlsplit(pulsar_url.partition(",")[0])
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 6650) as first, \
            FaultProxy(target.hostname or "127.0.0.1", target.port or 6650) as second:
        yield first, second


def _multi_host(pulsar_url: str, *proxies: FaultProxy) -> str:
    admin = parse_pulsar_url(pulsar_url).admin_url
    hosts = ",".join(f"127.0.0.1:{proxy.port}" for proxy in proxies)
    return f"pulsar://{hosts}?admin_url={admin}"


async def _round_trip(transport: PulsarTransport, count: int) -> list[bytes]:
    queue = f"test.multihost.{uuid.uuid4().hex[:12]}"
    await transport.declare(queue)
    got: list[bytes] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.body)
        await delivery.ack()
        if len(got) >= count:
            done.set()

    handle = await transport.consume(queue, handler, prefetch=10)
    try:
        for n in range(count):
            await transport.publish(queue, OutgoingMessage(body=b"%d" % n, message_id=uuid.uuid4().hex, headers={}))
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await handle.cancel()
        await transport.delete(queue)
    return got


def test_a_multi_host_service_url_keeps_every_host() -> None:
    parsed = parse_pulsar_url("pulsar://user:pw@h1:6650,h2:6651,[::1]:6652/?admin_url=http://admin:8080")
    assert parsed.service_url == "pulsar://h1:6650,h2:6651,[::1]:6652"
    assert parsed.admin_url == "http://admin:8080"
    assert parse_pulsar_url("pulsar+ssl://h1:6651,h2:6651").admin_url == "https://h1:8443"  # the first host's


async def test_a_client_whose_first_host_is_down_works_through_the_next(
    pulsar_url: str, proxies: tuple[FaultProxy, FaultProxy]
) -> None:
    dead, alive = proxies
    dead.refuse()
    async with PulsarTransport(_multi_host(pulsar_url, dead, alive)) as transport:
        got = await _round_trip(transport, 20)
        assert alive.connections >= 1  # the lookups went (and stay connected) through the live host
    assert sorted(got, key=int) == [b"%d" % n for n in range(20)]


async def test_a_client_keeps_working_when_the_host_it_used_goes_away(
    pulsar_url: str, proxies: tuple[FaultProxy, FaultProxy]
) -> None:
    first, second = proxies
    async with PulsarTransport(_multi_host(pulsar_url, first, second)) as transport:
        assert len(await _round_trip(transport, 10)) == 10
        for gone, left in ((first, second), (second, first)):
            gone.refuse()
            gone.cut()  # every connection through it reset, as a broker that dies does
            left.accept()
            got = await _round_trip(transport, 10)  # new topics: new lookups, through the other host
            assert sorted(got, key=int) == [b"%d" % n for n in range(10)]
