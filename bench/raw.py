"""The baseline: what a careful engineer writes with aio-pika alone, and nothing more.

Durable quorum queues, persistent messages, publisher confirms, ack after the handler,
prefetch as configured, JSON bodies parsed with orjson. Retries use the same topology
idea as Conveyor: a TTL'd retry queue dead-lettering back to the work queue, the copy
confirmed before the original is acked.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import orjson

from bench.support import QUORUM, emit, finish_raw_worker, ready, run_windowed

__all__ = ["declare_retry_topology", "prepublish", "publish_rate", "worker_main"]

PERSISTENT = aio_pika.DeliveryMode.PERSISTENT


def body_for(i: int) -> bytes:
    return orjson.dumps({"i": i, "sent_at": time.time()})


async def _connect(url: str) -> tuple[aio_pika.abc.AbstractRobustConnection, aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True)
    return connection, channel


async def declare_queue(url: str, queue: str) -> None:
    connection, channel = await _connect(url)
    async with connection:
        await channel.declare_queue(queue, durable=True, arguments=QUORUM)


async def declare_retry_topology(url: str, queue: str, retry_queue: str, ttl_ms: int, retry_queue_args: dict[str, Any]) -> None:
    """Work queue plus a retry queue whose messages expire after ``ttl_ms`` back into it."""
    connection, channel = await _connect(url)
    async with connection:
        await channel.declare_queue(queue, durable=True, arguments=QUORUM)
        arguments = {
            **retry_queue_args,
            "x-message-ttl": ttl_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
        }
        await channel.declare_queue(retry_queue, durable=True, arguments=arguments)


async def publish_rate(url: str, queue: str, n: int, window: int) -> tuple[float, float]:
    """(wall, CPU) seconds to publish ``n`` confirmed persistent messages with ``window`` in flight."""
    connection, channel = await _connect(url)
    async with connection:
        await channel.declare_queue(queue, durable=True, arguments=QUORUM)
        exchange = channel.default_exchange

        async def publish_one(i: int) -> None:
            await exchange.publish(
                aio_pika.Message(body_for(i), delivery_mode=PERSISTENT, content_type="application/json"),
                routing_key=queue,
            )

        return await run_windowed(publish_one, n, window)


async def prepublish(url: str, queue: str, n: int, window: int = 500) -> None:
    await publish_rate(url, queue, n, window)


async def publish_paced(url: str, queue: str, rate: float, n: int) -> float:
    """Publish ``n`` messages at ``rate``/s, each stamped with its send time; returns lag."""
    connection, channel = await _connect(url)
    async with connection:
        exchange = channel.default_exchange

        async def publish_one(i: int) -> None:
            await exchange.publish(
                aio_pika.Message(body_for(i), delivery_mode=PERSISTENT, content_type="application/json"),
                routing_key=queue,
            )

        return await _paced(publish_one, rate, n)


async def _paced(publish_one: Any, rate: float, n: int) -> float:
    """Start publish ``i`` at ``t0 + i/rate`` without waiting for earlier confirms."""
    loop = asyncio.get_running_loop()
    tasks = []
    t0 = loop.time()
    worst_lag = 0.0
    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            worst_lag = max(worst_lag, -delay)
        tasks.append(asyncio.create_task(publish_one(i)))
    await asyncio.gather(*tasks)
    return worst_lag


# -- the worker subprocess side -------------------------------------------------------------


async def noop(data: Any) -> None:
    return None


async def worker_main(spec: dict[str, Any]) -> None:
    mode = spec["mode"]
    n = int(spec["n"])
    connection, channel = await _connect(spec["url"])
    await channel.set_qos(prefetch_count=int(spec["prefetch"]))
    queue = await channel.declare_queue(spec["queue"], durable=True, arguments=QUORUM, passive=True)
    done = asyncio.Event()
    state = {"count": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0}
    latencies: list[float] = []
    exchange = channel.default_exchange
    retry_queue = spec.get("retry_queue")

    def finished_one() -> None:
        state["count"] += 1
        if state["count"] >= n:
            state["last"] = time.perf_counter()
            state["cpu_last"] = time.process_time()
            done.set()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if not state["first"]:
            state["first"] = time.perf_counter()
            state["cpu_first"] = time.process_time()
        data = orjson.loads(message.body)
        if mode == "latency":
            latencies.append(time.time() - data["sent_at"])
        if mode == "retry":
            attempt = int((message.headers or {}).get("x-attempt", 1))  # type: ignore[arg-type]
            if attempt == 1:
                # Fail once: confirm a copy into the TTL'd retry queue, then ack the original.
                await exchange.publish(
                    aio_pika.Message(
                        message.body,
                        headers={"x-attempt": attempt + 1},
                        delivery_mode=PERSISTENT,
                        content_type="application/json",
                    ),
                    routing_key=retry_queue,
                )
                await message.ack()
                return
        await noop(data)
        await message.ack()
        finished_one()

    await queue.consume(on_message)
    ready()
    result = await finish_raw_worker(done, state, n, spec, latencies)
    await connection.close()
    emit(result)
