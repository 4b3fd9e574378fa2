"""The fault proxy against a local echo server: it forwards faithfully, and each fault does
exactly what it says (cut resets, a blackhole stalls without losing bytes, refuse refuses)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest

from tests.faults.proxy import FaultProxy


class EchoServer:
    """Echoes every byte back; counts the connections it saw open and closed."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.closed += 1
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[EchoServer, int]]:
    server = EchoServer()
    port = await server.start()
    yield server, port
    await server.stop()


@pytest.fixture
async def proxy(echo: tuple[EchoServer, int]) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo[1]) as running:
        yield running


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(*proxy.address), 5)


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 5) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """The other end closed: EOF, or a reset (a cut aborts with RST)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_it_forwards_bytes_both_ways_unchanged(proxy: FaultProxy, echo: tuple[EchoServer, int]) -> None:
    reader, writer = await connect(proxy)
    assert await roundtrip(reader, writer, b"hello") == b"hello"
    big = os.urandom(2 * 1024 * 1024)
    writer.write(big)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(big)), 10) == big
    assert proxy.connections == 1 and echo[0].opened == 1
    writer.close()
    await until(lambda: proxy.connections == 0 and echo[0].closed == 1)


async def test_a_half_close_passes_through(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"last words")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"last words"  # echoed, then EOF
    writer.close()


async def test_cut_resets_open_connections_and_new_ones_still_work(
    proxy: FaultProxy, echo: tuple[EchoServer, int]
) -> None:
    reader, writer = await connect(proxy)
    await roundtrip(reader, writer, b"before")
    assert proxy.cut() == 1
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await roundtrip(reader, writer, b"after")  # reset, or EOF: the connection is gone
    await until(lambda: echo[0].closed == 1 and proxy.connections == 0)
    writer.close()
    fresh_reader, fresh_writer = await connect(proxy)
    assert await roundtrip(fresh_reader, fresh_writer, b"again") == b"again"
    fresh_writer.close()


async def test_a_blackhole_stalls_both_directions_then_delivers_everything(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    await roundtrip(reader, writer, b"ping")
    proxy.blackhole(0.5)
    assert proxy.blackholed
    writer.write(b"held")
    await writer.drain()
    echoed = asyncio.ensure_future(reader.readexactly(4))
    done, _ = await asyncio.wait({echoed}, timeout=0.3)
    assert not done, "nothing comes back during the blackhole"
    assert proxy.connections == 1, "the connection stays open"
    assert await asyncio.wait_for(echoed, 5) == b"held", "stalled, not lost"
    assert not proxy.blackholed
    writer.close()


async def test_a_blackhole_until_restore_also_holds_new_connections(
    proxy: FaultProxy, echo: tuple[EchoServer, int]
) -> None:
    proxy.blackhole()
    reader, writer = await connect(proxy)  # the TCP connect to the proxy succeeds…
    writer.write(b"anyone?")
    await writer.drain()
    await asyncio.sleep(0.3)
    assert echo[0].opened == 0, "…but nothing reaches the target"
    assert not reader.at_eof()
    proxy.restore()
    assert await asyncio.wait_for(reader.readexactly(7), 5) == b"anyone?"
    writer.close()


async def test_cut_during_a_blackhole_still_closes_the_connections(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    await roundtrip(reader, writer, b"x")
    proxy.blackhole()
    writer.write(b"stuck")
    await writer.drain()
    proxy.cut()
    await until(lambda: proxy.connections == 0)
    assert await closed_by_peer(reader)
    proxy.restore()
    writer.close()


async def test_refuse_refuses_new_connections_until_accept_on_the_same_port(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    port = proxy.port
    proxy.refuse()
    assert not proxy.accepting
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert await roundtrip(reader, writer, b"still up") == b"still up", "open connections are untouched"
    proxy.accept()
    assert proxy.port == port
    other_reader, other_writer = await connect(proxy)
    assert await roundtrip(other_reader, other_writer, b"welcome back") == b"welcome back"
    writer.close()
    other_writer.close()


async def test_an_unreachable_target_closes_the_client_connection() -> None:
    # A port bound but never listened on refuses connections, and stays ours for the whole test.
    # (A freed port could be taken meanwhile, or the proxy's connect to it could pick that same
    # port as its source and connect to itself (TCP simultaneous open): either hangs the read.)
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        async with FaultProxy("127.0.0.1", port, connect_timeout=2) as proxy:
            reader, writer = await connect(proxy)
            assert await closed_by_peer(reader)
            writer.close()


async def test_stop_closes_everything_and_rewrite_url_points_at_the_proxy(echo: tuple[EchoServer, int]) -> None:
    proxy = await FaultProxy("127.0.0.1", echo[1]).start()
    rewritten = proxy.rewrite_url("amqp://u:p@127.0.0.1:5672/vhost?heartbeat=5")
    assert rewritten == f"amqp://u:p@127.0.0.1:{proxy.port}/vhost?heartbeat=5"
    assert proxy.rewrite_url("postgresql://db.example:5432/x") == f"postgresql://127.0.0.1:{proxy.port}/x"
    reader, writer = await connect(proxy)
    await roundtrip(reader, writer, b"bye")
    await proxy.stop()
    assert proxy.connections == 0
    assert await closed_by_peer(reader)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.close()
