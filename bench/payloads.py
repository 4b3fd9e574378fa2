"""``python -m bench.payloads``: 1 MiB payloads through claim checks, beside a raw loop.

For each setup, N jobs of 1 MiB JSON are published (``--window`` at once) and consumed
(``--concurrency`` at once) until every job ran and every object was deleted again:

- conveyor · memory + S3   Producer/Worker on the in-memory broker, S3 store (real server)
- conveyor · rabbitmq + S3 the same on RabbitMQ (only when CONVEYOR_AMQP_URL is set)
- raw · rabbitmq + S3      what a careful engineer writes by hand: aiobotocore put_object +
                           aio-pika confirmed publish of {bucket, key, sha256, size}; a consumer
                           get_object → sha256 check → handler → delete_object → ack

Reported: publish rate (upload + confirmed publish), round trip rate (first publish to last
job done), and payload MB/s over the round trip. S3 endpoint and keys come from
CONVEYOR_S3_URL (default http://127.0.0.1:9000), CONVEYOR_S3_ACCESS_KEY/SECRET_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.payload_store.s3 import S3PayloadStore
from conveyor.common.transport.base import Transport
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer

__all__ = ["main"]

MIB = 1024 * 1024
BUCKET = "conveyor-bench"


class Blob(BaseModel):
    i: int
    data: str


@dataclass
class Result:
    name: str
    jobs: int
    publish_s: float
    total_s: float
    payload_bytes: int

    def row(self) -> list[str]:
        mb = self.payload_bytes / MIB
        return [
            self.name,
            str(self.jobs),
            f"{self.jobs / self.publish_s:,.0f}",
            f"{self.jobs / self.total_s:,.0f}",
            f"{mb / self.total_s:,.0f}",
        ]


def payload(i: int) -> Blob:
    # Hex text: 1 MiB of JSON that no layer can compress away.
    return Blob(i=i, data=os.urandom(MIB // 2 - 16).hex())


async def windowed(call: Callable[[int], Awaitable[Any]], n: int, window: int) -> float:
    counter = itertools.count()
    started = time.perf_counter()

    async def lane() -> None:
        while (i := next(counter)) < n:
            await call(i)

    await asyncio.gather(*(lane() for _ in range(min(window, n))))
    return time.perf_counter() - started


def s3_store(prefix: str) -> S3PayloadStore:
    return S3PayloadStore(
        BUCKET,
        prefix=prefix,
        endpoint_url=os.environ.get("CONVEYOR_S3_URL", "http://127.0.0.1:9000"),
        access_key=os.environ.get("CONVEYOR_S3_ACCESS_KEY", "conveyor"),
        secret_key=os.environ.get("CONVEYOR_S3_SECRET_KEY", "conveyor-secret"),
        max_bytes=8 * MIB,
    )


async def run_conveyor(name: str, make_transport: Callable[[], Transport], n: int, window: int, concurrency: int) -> Result:
    queue = f"bench.payloads.{uuid.uuid4().hex[:8]}"
    store = s3_store(f"bench-{uuid.uuid4().hex[:8]}")
    await store.ensure_bucket()
    jobs = JobRegistry()
    count = 0

    @jobs.job("bench.blob", queue=queue)
    async def handle(blob: Blob, ctx: JobContext) -> None:
        nonlocal count
        count += 1

    bodies = [payload(i) for i in range(n)]
    size = sum(len(orjson.dumps(b.model_dump())) for b in bodies)
    producer_transport, worker_transport = make_transport(), make_transport()
    await worker_transport.connect()
    try:
        async with Producer.for_registry(producer_transport, jobs, payload_store=store) as producer:
            worker = Worker(worker_transport, jobs, config=WorkerConfig(concurrency=concurrency), payload_store=store)
            async with worker:
                started = time.perf_counter()
                publish_s = await windowed(lambda i: producer.publish("bench.blob", bodies[i]), n, window)
                while worker.counts["succeeded"] < n:
                    await asyncio.sleep(0.005)
                total_s = time.perf_counter() - started
        leftover = [o async for o in store.list_objects()]
        assert not leftover, f"{len(leftover)} objects were not deleted"
        assert count == n
        return Result(name, n, publish_s, total_s, size)
    finally:
        await worker_transport.delete(queue)
        await worker_transport.close()
        await store.close()


async def run_raw(url: str, n: int, window: int, concurrency: int) -> Result:
    import aio_pika

    store = s3_store(f"bench-raw-{uuid.uuid4().hex[:8]}")
    await store.ensure_bucket()
    client = await store.client()
    queue = f"bench.payloads.raw.{uuid.uuid4().hex[:8]}"
    bodies = [orjson.dumps(payload(i).model_dump()) for i in range(n)]
    size = sum(map(len, bodies))
    connection = await aio_pika.connect_robust(url)
    finished = 0
    all_done = asyncio.Event()
    try:
        pub = await connection.channel(publisher_confirms=True)
        sub = await connection.channel()
        await sub.set_qos(prefetch_count=concurrency)
        declared = await sub.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal finished
            ref = orjson.loads(message.body)
            answer = await client.get_object(Bucket=BUCKET, Key=ref["key"])
            async with answer["Body"] as stream:
                data = await stream.read()
            if len(data) != ref["size"] or hashlib.sha256(data).hexdigest() != ref["sha256"]:
                raise RuntimeError("integrity")
            orjson.loads(data)  # the handler's share: parse it
            await client.delete_object(Bucket=BUCKET, Key=ref["key"])
            await message.ack()
            finished += 1
            if finished == n:
                all_done.set()

        await declared.consume(on_message)

        async def publish_one(i: int) -> None:
            key = f"{store.prefix}/bench.blob/{uuid.uuid4().hex}.json"
            await client.put_object(Bucket=BUCKET, Key=key, Body=bodies[i], ContentType="application/json")
            ref = {"bucket": BUCKET, "key": key, "sha256": hashlib.sha256(bodies[i]).hexdigest(), "size": len(bodies[i])}
            await pub.default_exchange.publish(
                aio_pika.Message(orjson.dumps(ref), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
            )

        started = time.perf_counter()
        publish_s = await windowed(publish_one, n, window)
        await asyncio.wait_for(all_done.wait(), 600)
        total_s = time.perf_counter() - started
        await sub.queue_delete(queue)
        return Result("raw · rabbitmq + S3 (aiobotocore + aio-pika)", n, publish_s, total_s, size)
    finally:
        await connection.close()
        await store.close()


def median(runs: list[Result]) -> Result:
    """The run with the median round trip: one shared 2-core machine is noisy."""
    return sorted(runs, key=lambda r: r.total_s)[len(runs) // 2]


async def run(args: argparse.Namespace) -> list[tuple[Result, list[Result]]]:
    setups: list[Callable[[], Awaitable[Result]]] = []
    broker = MemoryBroker()
    setups.append(lambda: run_conveyor("conveyor · memory + S3", lambda: MemoryTransport(broker), args.jobs,
                                       args.window, args.concurrency))
    url = os.environ.get("CONVEYOR_AMQP_URL")
    if url:
        from conveyor.common.transport.rabbitmq import RabbitMQTransport

        setups.append(lambda: run_conveyor("conveyor · rabbitmq + S3", lambda: RabbitMQTransport(url), args.jobs,
                                           args.window, args.concurrency))
        setups.append(lambda: run_raw(url, args.jobs, args.window, args.concurrency))
    runs: list[list[Result]] = [[] for _ in setups]
    for _ in range(args.repeat):  # interleaved, so a burst of load elsewhere hits every setup alike
        for i, setup in enumerate(setups):
            runs[i].append(await setup())
    return [(median(r), r) for r in runs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.payloads", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="1 MiB jobs per setup (default 200)")
    parser.add_argument("--window", type=int, default=16, help="publishes in flight (default 16)")
    parser.add_argument("--concurrency", type=int, default=16, help="worker concurrency (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per setup; the median is shown (default 3)")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    table = Table(title=f"1 MiB payloads through claim checks ({args.jobs} jobs, window {args.window}, "
                        f"concurrency {args.concurrency}, median of {args.repeat})")
    for column in ("setup", "jobs", "publish jobs/s", "round trip jobs/s", "round trip MB/s", "round trip range"):
        table.add_column(column, justify="left" if column == "setup" else "right")
    for result, runs in results:
        rates = sorted(r.jobs / r.total_s for r in runs)
        table.add_row(*result.row(), f"{rates[0]:,.0f}–{rates[-1]:,.0f}")
    console = Console()
    console.print(table)
    if not os.environ.get("CONVEYOR_AMQP_URL"):
        console.print("CONVEYOR_AMQP_URL is not set: RabbitMQ and the raw aio-pika loop were skipped")


if __name__ == "__main__":
    main()
