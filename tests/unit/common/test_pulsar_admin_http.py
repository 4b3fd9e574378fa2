"""The admin API's HTTP/1.1 on h11: what a broker may answer, and what it may fail to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from conveyor.common.errors import TransportError
from conveyor.common.transport.pulsar.admin import AdminClient


@asynccontextmanager
async def raw_server(reply: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]) -> AsyncIterator[int]:
    """A TCP server that answers each connection with ``reply`` (bytes written by hand)."""

    handlers: list[asyncio.Task[object]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")  # the request head (no body on GET)
            await reply(reader, writer)  # type: ignore[misc]
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        server.close()
        await server.wait_closed()


async def _client(port: int, timeout: float = 5.0) -> AdminClient:
    client = AdminClient(f"http://127.0.0.1:{port}", timeout=timeout)
    await client.start()
    return client


async def test_a_chunked_json_answer_is_read_whole() -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\n[\"con\r\n8\r\nveyor\",\"\r\n3\r\nb\"]\r\n0\r\n\r\n")
        await writer.drain()

    async with raw_server(reply) as port:
        client = await _client(port)
        assert await client.subscriptions("/persistent/t/n/q") == ["conveyor", "b"]


async def test_a_missing_topic_is_none_and_a_refusal_names_its_status() -> None:
    statuses = iter([b"404 Not Found", b"403 Forbidden"])

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 " + next(statuses) + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with raw_server(reply) as port:
        client = await _client(port)
        assert await client.subscriptions("/persistent/t/n/q") is None
        with pytest.raises(TransportError, match="refused GET .*403"):
            await client.subscriptions("/persistent/t/n/q")


async def test_a_connection_closed_before_any_answer_is_a_transport_error() -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None  # closes at once

    async with raw_server(reply) as port:
        client = await _client(port)
        with pytest.raises(TransportError, match="unreachable"):
            await client.subscriptions("/persistent/t/n/q")


async def test_an_answer_that_never_comes_ends_at_the_timeout() -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with raw_server(reply) as port:
        client = await _client(port, timeout=0.3)
        with pytest.raises(TransportError, match="unreachable: TimeoutError"):
            await client.subscriptions("/persistent/t/n/q")


async def test_malformed_json_is_a_transport_error_not_a_traceback() -> None:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n[\"a\",")
        await writer.drain()

    async with raw_server(reply) as port:
        client = await _client(port)
        with pytest.raises(TransportError, match="malformed JSON"):
            await client.subscriptions("/persistent/t/n/q")


async def test_a_client_not_started_refuses() -> None:
    client = AdminClient("http://127.0.0.1:1", timeout=1)
    with pytest.raises(TransportError, match="not started"):
        await client.subscriptions("/persistent/t/n/q")
