"""``python -m bench.sync_producer``: SyncProducer's overhead against the async Producer.

Each row publishes N jobs with confirms to the same broker, one job per call, and reports
publishes per second and the mean time per publish:

- async · 1 task        ``await producer.publish(...)`` in a loop (the baseline)
- sync · 1 thread       ``SyncProducer.publish`` in a loop: the same producer on its loop thread,
                        plus one hop to the loop and back per call
- async · T tasks       T tasks awaiting publishes concurrently on one connection
- sync · T threads      T threads calling one SyncProducer (one connection)

On RabbitMQ (CONVEYOR_AMQP_URL, default amqp://conveyor:conveyor@127.0.0.1:5672/) and on the
in-memory broker (``--broker memory``: no network, so the row shows the thread hop alone).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from dataclasses import dataclass

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.factory import transport_from_url
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.producer.producer import Producer
from conveyor.producer.sync_producer import SyncProducer

__all__ = ["main"]

DEFAULT_URL = "amqp://conveyor:conveyor@127.0.0.1:5672/"


@dataclass
class Row:
    name: str
    jobs: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def micros(self) -> float:
        return self.seconds / self.jobs * 1e6


class Tick(BaseModel):
    i: int


def _registry(queue: str) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.job("bench.sync", queue=queue)
    async def handler(payload: Tick, ctx: object) -> None:
        return None

    return jobs


class Bench:
    def __init__(self, broker: str, url: str, n: int, threads: int) -> None:
        self.broker, self.url, self.n, self.threads = broker, url, n, threads
        self.queue = f"bench.sync.{uuid.uuid4().hex[:8]}"
        self.jobs = _registry(self.queue)
        self.memory = MemoryBroker()

    def producer(self) -> Producer:
        transport = MemoryTransport(self.memory) if self.broker == "memory" else transport_from_url(self.url)
        return Producer.for_registry(transport, self.jobs)

    async def run_async(self, tasks: int) -> Row:
        async with self.producer() as producer:
            await producer.publish("bench.sync", {"i": -1})  # connect and declare outside the timing
            per = self.n // tasks

            async def lane() -> None:
                for i in range(per):
                    await producer.publish("bench.sync", {"i": i})

            start = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(tasks)))
            elapsed = time.perf_counter() - start
        return Row(f"async · {tasks} task{'s' if tasks > 1 else ''}", per * tasks, elapsed)

    def run_sync(self, threads: int) -> Row:
        with SyncProducer(self.producer) as producer:
            producer.publish("bench.sync", {"i": -1})
            per = self.n // threads

            def lane() -> None:
                for i in range(per):
                    producer.publish("bench.sync", {"i": i})

            workers = [threading.Thread(target=lane) for _ in range(threads)]
            start = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            elapsed = time.perf_counter() - start
        return Row(f"sync · {threads} thread{'s' if threads > 1 else ''}", per * threads, elapsed)

    async def clean_up(self) -> None:
        if self.broker != "memory":
            async with transport_from_url(self.url) as transport:
                await transport.delete(self.queue)


def run(args: argparse.Namespace) -> list[Row]:
    bench = Bench(args.broker, args.url, args.jobs, args.threads)
    rows: list[Row] = []
    try:
        for _ in range(args.repeat):  # best of each, ABAB order
            rows += [asyncio.run(bench.run_async(1)), bench.run_sync(1),
                     asyncio.run(bench.run_async(args.threads)), bench.run_sync(args.threads)]
    finally:
        asyncio.run(bench.clean_up())
    best: dict[str, Row] = {}
    for row in rows:
        if row.name not in best or row.rate > best[row.name].rate:
            best[row.name] = row
    return list(best.values())


def render(rows: list[Row], broker: str) -> Table:
    table = Table(title=f"SyncProducer vs Producer on {broker} (publish + confirm, one job per call)")
    for column in ("setup", "jobs", "publishes/s", "µs per publish", "vs async"):
        table.add_column(column, justify="left" if column == "setup" else "right")
    base = {1: rows[0], 2: rows[2]}
    for i, row in enumerate(rows):
        ref = base[1 if i < 2 else 2]
        table.add_row(row.name, f"{row.jobs:,}", f"{row.rate:,.0f}", f"{row.micros:,.0f}",
                      f"{row.micros - ref.micros:+,.0f} µs" if row is not ref else "—")
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sync_producer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", choices=["rabbitmq", "pulsar", "memory"], default="rabbitmq")
    p.add_argument("--url", help="broker URL (default: CONVEYOR_AMQP_URL or CONVEYOR_PULSAR_URL)")
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--threads", type=int, default=8, help="threads (and async tasks) in the concurrent rows")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    if args.url is None:
        env = "CONVEYOR_PULSAR_URL" if args.broker == "pulsar" else "CONVEYOR_AMQP_URL"
        default = "pulsar://127.0.0.1:6650" if args.broker == "pulsar" else DEFAULT_URL
        args.url = os.environ.get(env, default)
    Console().print(render(run(args), args.broker))


if __name__ == "__main__":
    main()
