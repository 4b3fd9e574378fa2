"""The tighter bound: the same loops written on aiormq alone (the client aio-pika sits on).

What a careful engineer writes without aio-pika's objects: ``basic_publish`` with prebuilt
persistent properties and a confirm per message, ``basic_consume`` with a callback that
parses the body with orjson and acks. Durable quorum queues and publisher confirms, as on
every other side. The retry bound acks each failed delivery after its copy is confirmed into
a TTL'd queue that dead-letters back to the work queue (a delayed retry, not a requeue).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiormq
import aiormq.abc
import orjson
from pamqp.commands import Basic

from bench.raw import body_for, noop
from bench.support import QUORUM as _QUORUM
from bench.support import emit, finish_raw_worker, ready, run_windowed

__all__ = ["declare_queue", "declare_retry_topology", "prepublish", "publish_paced", "publish_rate", "worker_main"]

QUORUM: dict[str, Any] = dict(_QUORUM)  # aiormq wants its FieldValue mapping
PROPERTIES = Basic.Properties(delivery_mode=2, content_type="application/json")


async def _connect(url: str) -> tuple[aiormq.abc.AbstractConnection, aiormq.abc.AbstractChannel]:
    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    return connection, channel


async def declare_queue(url: str, queue: str) -> None:
    connection, channel = await _connect(url)
    try:
        await channel.queue_declare(queue, durable=True, arguments=QUORUM)
    finally:
        await connection.close()


async def declare_retry_topology(
    url: str, queue: str, retry_queue: str, ttl_ms: int, retry_queue_args: dict[str, Any]
) -> None:
    """Work queue plus a retry queue whose messages expire after ``ttl_ms`` back into it."""
    connection, channel = await _connect(url)
    try:
        await channel.queue_declare(queue, durable=True, arguments=QUORUM)
        arguments: dict[str, Any] = {
            **retry_queue_args,
            "x-message-ttl": ttl_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
        }
        await channel.queue_declare(retry_queue, durable=True, arguments=arguments)
    finally:
        await connection.close()


async def publish_rate(url: str, queue: str, n: int, window: int) -> tuple[float, float]:
    """(wall, CPU) seconds to publish ``n`` confirmed persistent messages with ``window`` in flight."""
    connection, channel = await _connect(url)
    try:
        await channel.queue_declare(queue, durable=True, arguments=QUORUM)

        async def publish_one(i: int) -> None:
            confirm = await channel.basic_publish(body_for(i), routing_key=queue, properties=PROPERTIES)
            if not isinstance(confirm, Basic.Ack):
                raise RuntimeError(f"publish {i} not confirmed: {confirm!r}")

        return await run_windowed(publish_one, n, window)
    finally:
        await connection.close()


async def prepublish(url: str, queue: str, n: int, window: int = 500) -> None:
    await publish_rate(url, queue, n, window)


async def publish_paced(url: str, queue: str, rate: float, n: int) -> float:
    """Publish ``n`` messages at ``rate``/s, each stamped with its send time; returns lag."""
    from bench.raw import _paced

    connection, channel = await _connect(url)
    try:

        async def publish_one(i: int) -> None:
            await channel.basic_publish(body_for(i), routing_key=queue, properties=PROPERTIES)

        return await _paced(publish_one, rate, n)
    finally:
        await connection.close()


# -- the worker subprocess side -------------------------------------------------------------


async def worker_main(spec: dict[str, Any]) -> None:
    mode = spec["mode"]
    n = int(spec["n"])
    connection, channel = await _connect(spec["url"])
    await channel.basic_qos(prefetch_count=int(spec["prefetch"]))
    done = asyncio.Event()
    state = {"count": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0}
    latencies: list[float] = []
    retry_queue = spec.get("retry_queue") or ""

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        if not state["first"]:
            state["first"] = time.perf_counter()
            state["cpu_first"] = time.process_time()
        data = orjson.loads(message.body)
        if mode == "latency":
            latencies.append(time.time() - data["sent_at"])
        tag = message.delivery_tag
        assert tag is not None
        if mode == "retry":
            headers = message.header.properties.headers or {}
            if headers.get("x-attempt", 1) == 1:
                # Fail once: confirm a copy into the TTL'd retry queue, then ack the original.
                properties = Basic.Properties(
                    delivery_mode=2, content_type="application/json", headers={"x-attempt": 2}
                )
                await channel.basic_publish(message.body, routing_key=retry_queue, properties=properties)
                await channel.basic_ack(tag)
                return
        await noop(data)
        await channel.basic_ack(tag)
        state["count"] += 1
        if state["count"] >= n:
            state["last"] = time.perf_counter()
            state["cpu_last"] = time.process_time()
            done.set()

    await channel.basic_consume(spec["queue"], on_message)
    ready()
    result = await finish_raw_worker(done, state, n, spec, latencies)
    await connection.close()
    emit(result)
