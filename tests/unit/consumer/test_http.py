from __future__ import annotations

import asyncio
import io
import logging

import aiohttp
import orjson
import pytest
from pydantic import BaseModel

from conveyor.common.errors import ConfigurationError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.logging import configure_logging
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer import http as http_module
from conveyor.consumer.http import HealthServer
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


async def test_health_ready_and_metrics_endpoints_follow_the_worker() -> None:
    broker = MemoryBroker()
    jobs = JobRegistry()

    @jobs.job("t.job")
    async def handler(payload: Job, ctx: JobContext) -> None:
        logging.getLogger("app").warning("handling")

    transport = MemoryTransport(broker)
    await transport.connect()
    worker = Worker(transport, jobs)
    server = HealthServer(worker, "127.0.0.1", 0)
    await server.start()
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"{base}/healthz")).status == 200
            assert (await http.get(f"{base}/readyz")).status == 503  # not consuming yet
            await worker.start()
            assert (await http.get(f"{base}/readyz")).status == 200
            async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
                receipt = await producer.publish("t.job", Job(n=1))
            await broker.join(DEFAULT_QUEUE)
            metrics = await (await http.get(f"{base}/metrics")).text()
            assert 'conveyor_jobs_succeeded_total{job_type="t.job"} 1.0' in metrics
            assert "conveyor_consumers_attached 1.0" in metrics
            await worker.drain(0)
            assert (await http.get(f"{base}/readyz")).status == 503  # draining: take no traffic
    finally:
        await worker.stop()
        await server.stop()
        logging.getLogger().handlers.clear()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    [handled] = [line for line in lines if line["msg"] == "handling"]
    assert handled["job_id"] == receipt.job_id and handled["job_type"] == "t.job" and handled["attempt"] == 1


# -- the hand-routed HTTP/1.1 server (h11): hostile clients ----------------------------------


async def _raw(port: int, data: bytes, *, close_write: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if close_write:
        writer.write_eof()
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def _server() -> tuple[HealthServer, Worker]:
    transport = MemoryTransport(MemoryBroker())
    await transport.connect()
    worker = Worker(transport, JobRegistry())
    server = HealthServer(worker, "127.0.0.1", 0)
    await server.start()
    return server, worker


async def test_unknown_paths_other_methods_and_garbage_get_their_status_lines() -> None:
    server, _ = await _server()
    assert server.port
    try:
        assert (await _raw(server.port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        assert (await _raw(server.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
        assert (await _raw(server.port, b"\x16\x03\x01 not http at all\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
        assert (await _raw(server.port, huge)).startswith(b"HTTP/1.1 431 ")
        head = await _raw(server.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # headers only
        ok = await _raw(server.port, b"GET /healthz?x=1 HTTP/1.0\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b'{"status": "ok"}')
        # a client that stops sending half way through its head: a 400, and nothing else breaks
        assert (await _raw(server.port, b"GET /heal", close_write=True)).startswith(b"HTTP/1.1 400 ")
        assert (await _raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    finally:
        await server.stop()


async def test_a_silent_client_is_cut_and_stop_closes_open_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_module, "READ_TIMEOUT", 0.2)
    server, _ = await _server()
    assert server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # cut after READ_TIMEOUT, no answer
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes its head
    await writer.drain()
    await asyncio.sleep(0.05)
    await server.stop()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_a_client_that_never_reads_its_answer_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_module, "READ_TIMEOUT", 0.2)
    server, worker = await _server()
    assert server.port
    monkeypatch.setattr(worker.metrics, "render", lambda: b"x" * (32 << 20))  # far past any socket buffer
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        for _ in range(100):  # never read: the server's write stalls, then it gives up
            await asyncio.sleep(0.05)
            if not server._connections:
                break
        assert not server._connections, "a reader that never reads held a server task"
    finally:
        writer.close()
        await server.stop()


async def test_a_failing_answer_is_a_500_and_the_endpoint_stays_up(monkeypatch: pytest.MonkeyPatch) -> None:
    server, worker = await _server()
    assert server.port

    def broken() -> bytes:
        raise RuntimeError("boom")

    monkeypatch.setattr(worker.metrics, "render", broken)
    try:
        assert (await _raw(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 500 ")
        assert (await _raw(server.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 503 ")
    finally:
        await server.stop()


async def test_a_port_in_use_is_one_configuration_error() -> None:
    server, worker = await _server()
    try:
        with pytest.raises(ConfigurationError, match=r"cannot serve .* choose another --http-port"):
            await HealthServer(worker, "127.0.0.1", server.port or 0).start()
    finally:
        await server.stop()
