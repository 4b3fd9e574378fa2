"""The Pulsar baseline: a minimal raw ``pulsar.asyncio`` producer/consumer loop, nothing more.

Producer with batching disabled (as Conveyor's: an awaited send would otherwise wait out the
batching delay), each ``send`` awaited for the broker's receipt. Consumer on a Shared
subscription with ``receiver_queue_size = prefetch``; at most ``prefetch`` messages in
handling at once; ``orjson.loads`` → no-op → ``acknowledge``. The pending ``receive`` is
polled with ``asyncio.wait`` and never cancelled (a cancelled receive swallows the next message).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import pulsar
import pulsar.asyncio as pulsar_asyncio

from bench.support import emit, ready, run_windowed

__all__ = [
    "SUBSCRIPTION", "create_subscription", "prepublish", "publish_paced", "publish_rate", "topic", "worker_main",
]

SUBSCRIPTION = "bench-raw"
_CLOSE_GRACE = 0.05  # see PulsarTransport.close: the client's I/O thread must wind down first


def topic(name: str) -> str:
    return f"persistent://public/default/{name}"


def _client(url: str) -> pulsar_asyncio.Client:
    return pulsar_asyncio.Client(url, logger=pulsar.FileLogger(pulsar.LoggerLevel.Warn, "/dev/stderr"))


async def _close(client: pulsar_asyncio.Client) -> None:
    with contextlib.suppress(Exception):
        await client.close()
    await asyncio.sleep(_CLOSE_GRACE)


async def _subscribe(client: pulsar_asyncio.Client, name: str, receiver_queue_size: int) -> pulsar_asyncio.Consumer:
    return await client.subscribe(
        topic(name),
        SUBSCRIPTION,
        consumer_type=pulsar.ConsumerType.Shared,
        receiver_queue_size=receiver_queue_size,
        initial_position=pulsar.InitialPosition.Earliest,
    )


async def create_subscription(url: str, name: str) -> None:
    """A topic with no subscription keeps nothing: create the durable one before publishing."""
    client = _client(url)
    try:
        consumer = await _subscribe(client, name, 0)
        await consumer.close()
    finally:
        await _close(client)


def body_for(i: int) -> bytes:
    return orjson.dumps({"i": i, "sent_at": time.time()})


async def _producer(client: Any, name: str) -> Any:
    """The raw side's producer: no batching, like Conveyor's (each message its own entry)."""
    return await client.create_producer(
        topic(name), batching_enabled=False, send_timeout_millis=8000, max_pending_messages=1000
    )


async def publish_rate(url: str, name: str, n: int, window: int) -> tuple[float, float]:
    """(wall, CPU) seconds for ``n`` sends, each awaited for its receipt, ``window`` in flight."""
    await create_subscription(url, name)
    client = _client(url)
    try:
        producer = await _producer(client, name)

        async def publish_one(i: int) -> None:
            await producer.send(body_for(i))

        result = await run_windowed(publish_one, n, window)
        await producer.close()
        return result
    finally:
        await _close(client)


async def prepublish(url: str, name: str, n: int, window: int = 500) -> None:
    await publish_rate(url, name, n, window)


async def publish_paced(url: str, name: str, rate: float, n: int) -> float:
    """Send ``n`` messages at ``rate``/s, each stamped with its send time; returns the worst lag."""
    from bench.raw import _paced  # the same pacing as the RabbitMQ rows (harness side only)

    client = _client(url)
    try:
        producer = await _producer(client, name)

        async def publish_one(i: int) -> None:
            await producer.send(body_for(i))

        lag: float = await _paced(publish_one, rate, n)
        await producer.close()
        return lag
    finally:
        await _close(client)


# -- the worker subprocess side -------------------------------------------------------------


async def noop(data: Any) -> None:
    return None


async def worker_main(spec: dict[str, Any]) -> None:
    n, prefetch = int(spec["n"]), int(spec["prefetch"])
    latency = spec.get("mode") == "latency"
    latencies: list[float] = []
    client = _client(spec["url"])
    consumer = await _subscribe(client, spec["queue"], prefetch)
    slots = asyncio.Semaphore(prefetch)
    done = asyncio.Event()
    state = {"count": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0}
    tasks: set[asyncio.Task[None]] = set()

    async def handle(message: pulsar.Message) -> None:
        try:
            data = orjson.loads(message.data())
            if latency:
                latencies.append(time.time() - data["sent_at"])
            await noop(data)
            await consumer.acknowledge(message)
        finally:
            slots.release()
        state["count"] += 1
        if state["count"] >= n:
            state["last"] = time.perf_counter()
            state["cpu_last"] = time.process_time()
            done.set()

    ready()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(spec["timeout"])
    pending: asyncio.Future[pulsar.Message] | None = None
    while not done.is_set() and loop.time() < deadline:
        await slots.acquire()
        if pending is None:
            pending = asyncio.ensure_future(consumer.receive())
        # Poll the pending receive; never cancel it (a cancelled receive swallows a message).
        while not pending.done() and not done.is_set() and loop.time() < deadline:
            await asyncio.wait({pending}, timeout=0.5)
        if not pending.done():
            slots.release()
            break
        message, pending = pending.result(), None
        if not state["first"]:
            state["first"] = time.perf_counter()
            state["cpu_first"] = time.process_time()
        task = asyncio.create_task(handle(message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=10)
    result: dict[str, Any] = {"completed": state["count"]}
    if state["count"] >= n:
        result["seconds"] = state["last"] - state["first"]
        result["cpu_seconds"] = state["cpu_last"] - state["cpu_first"]
    if latency:
        result["latencies"] = latencies
    with contextlib.suppress(Exception):
        await consumer.close()  # flushes the grouped acks
    await _close(client)
    emit(result)
