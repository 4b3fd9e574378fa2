"""``python -m bench.outbox``: the transactional outbox's relay beside direct publishing, in one run.

Two rows per mode, on RabbitMQ (``--broker pulsar`` for Pulsar) and the real PostgreSQL
(CONVEYOR_DATABASE_URL):

- throughput, jobs/s from commit to confirmed publish. *outbox*: N rows committed first, then
  one ``OutboxRelay`` publishes them all and marks them sent (start of the relay → last row
  marked sent). *direct*: the same N jobs published by a ``Producer`` with ``--window`` confirms
  in flight (the relay's batch size), as a service would after its commits.
- commit → start latency, p50 / p99: the application commits one job per transaction at
  ``--rate`` jobs/s for ``--seconds``; a ``Worker`` in the same process notes when each job
  starts. *outbox*: ``outbox.add`` in the transaction, the relay woken by NOTIFY publishes it.
  *direct*: the transaction commits, then ``await producer.publish(...)``.

Application, relay and worker share one process and its event loop (2 cores): the figures
compare the two paths under the same load, they are not a capacity plan.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.factory import transport_from_url
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.outbox import Outbox, OutboxRelay, RelayConfig, migrate
from conveyor.producer.producer import Producer

__all__ = ["main"]


class Order(BaseModel):
    n: int


@dataclass
class Figures:
    mode: str
    throughput: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        token = uuid.uuid4().hex[:8]
        self.table = f"bench_outbox_{token}"
        self.queue = f"bench.outbox.{token}"
        self.started: dict[str, float] = {}
        self.jobs = JobRegistry()

        @self.jobs.job("bench.order", queue=self.queue)
        async def order(payload: Order, ctx: JobContext) -> None:
            self.started.setdefault(ctx.job_id, time.time())

        self.outbox = Outbox(jobs=self.jobs, table=self.table)

    def producer(self) -> Producer:
        return Producer(transport_from_url(self.args.url), allow_unregistered=True)

    def relay(self) -> OutboxRelay:
        return OutboxRelay(self.args.database_url, self.producer,
                           config=RelayConfig(table=self.table, batch_size=self.args.window, poll_interval=5))

    async def throughput_outbox(self, db: asyncpg.Connection) -> float:
        async with db.transaction():
            for n in range(self.args.jobs):
                await self.outbox.add_async(db, "bench.order", {"n": n})
        async with self.relay() as relay:
            start = time.perf_counter()
            while await relay.relay_once():
                pass
            return self.args.jobs / (time.perf_counter() - start)

    async def throughput_direct(self) -> float:
        async with Producer.for_registry(transport_from_url(self.args.url), self.jobs) as producer:
            await producer.publish("bench.order", {"n": -1})  # connect and declare outside the timing
            pending = iter(range(self.args.jobs))

            async def lane() -> None:
                for n in pending:
                    await producer.publish("bench.order", {"n": n})

            start = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(self.args.window)))
            return self.args.jobs / (time.perf_counter() - start)

    async def latency(self, commit_one: Callable[[asyncpg.Connection, int], Awaitable[tuple[str, float]]]) -> list[float]:
        """Commit at the configured rate; wait for every job to start; the latencies (s)."""
        committed: dict[str, float] = {}
        db = await asyncpg.connect(self.args.database_url)
        try:
            interval = 1.0 / self.args.rate
            begin = time.perf_counter()
            for n in range(int(self.args.rate * self.args.seconds)):
                await asyncio.sleep(max(0.0, begin + n * interval - time.perf_counter()))
                job_id, committed_at = await commit_one(db, n)
                committed[job_id] = committed_at
        finally:
            await db.close()
        deadline = time.monotonic() + 60
        while not set(committed) <= set(self.started) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return [self.started[j] - t for j, t in committed.items() if j in self.started]

    async def run(self) -> list[Figures]:
        db = await asyncpg.connect(self.args.database_url)
        await migrate(db, self.table)
        await db.execute(f"CREATE TABLE {self.table}_orders (n integer)")
        outbox, direct = Figures("outbox (relay)"), Figures("direct (publish after commit)")
        try:
            outbox.throughput = await self.throughput_outbox(db)
            direct.throughput = await self.throughput_direct()
            async with transport_from_url(self.args.url) as transport:
                await transport.delete(self.queue)  # the throughput rows' jobs are not run
            worker_transport = transport_from_url(self.args.url)
            async with worker_transport, Worker(worker_transport, self.jobs,
                                                config=WorkerConfig(concurrency=64, metrics_interval=0)):
                outbox.latencies = await self._outbox_latency()
                direct.latencies = await self._direct_latency()
        finally:
            await db.execute(f"DROP TABLE IF EXISTS {self.table}; DROP TABLE IF EXISTS {self.table}_orders;"
                             f" DROP FUNCTION IF EXISTS {self.table}_notify()")
            await db.close()
            async with transport_from_url(self.args.url) as transport:
                await transport.delete(self.queue)
        return [outbox, direct]

    async def _outbox_latency(self) -> list[float]:
        async def commit_one(db: asyncpg.Connection, n: int) -> tuple[str, float]:
            async with db.transaction():
                await db.execute(f"INSERT INTO {self.table}_orders (n) VALUES ($1)", n)
                job_id = await self.outbox.add_async(db, "bench.order", {"n": n})
            return job_id, time.time()

        stop = asyncio.Event()
        async with self.relay() as relay:
            task = asyncio.create_task(relay.run(stop))
            try:
                return await self.latency(commit_one)
            finally:
                stop.set()
                await task

    async def _direct_latency(self) -> list[float]:
        async with Producer.for_registry(transport_from_url(self.args.url), self.jobs) as producer:
            async def commit_one(db: asyncpg.Connection, n: int) -> tuple[str, float]:
                async with db.transaction():
                    await db.execute(f"INSERT INTO {self.table}_orders (n) VALUES ($1)", n)
                committed_at = time.time()  # the job's clock starts at the commit, as the outbox's does
                return (await producer.publish("bench.order", {"n": n})).job_id, committed_at

            return await self.latency(commit_one)


def render(rows: list[Figures], args: argparse.Namespace) -> Table:
    table = Table(title=f"Outbox relay vs direct publishing on {args.broker} + PostgreSQL "
                        f"({args.jobs:,} jobs; latency at {args.rate:g} jobs/s for {args.seconds:g} s)")
    for column in ("path", "commit → confirmed, jobs/s", "commit → start p50", "p99", "samples"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for row in rows:
        table.add_row(row.mode, f"{row.throughput:,.0f}", f"{row.percentile(0.5):.1f} ms",
                      f"{row.percentile(0.99):.1f} ms", f"{len(row.latencies):,}")
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.outbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", choices=["rabbitmq", "pulsar"], default="rabbitmq")
    p.add_argument("--url", help="broker URL (default: CONVEYOR_AMQP_URL or CONVEYOR_PULSAR_URL)")
    p.add_argument("--database-url", default=os.environ.get(
        "CONVEYOR_DATABASE_URL", "postgresql://conveyor:conveyor@127.0.0.1:5433/conveyor"))
    p.add_argument("--jobs", type=int, default=5000, help="jobs in the throughput rows")
    p.add_argument("--window", type=int, default=200, help="relay batch size = direct publishes in flight")
    p.add_argument("--rate", type=float, default=200.0, help="commits per second in the latency rows")
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each latency row")
    args = p.parse_args(argv)
    if args.url is None:
        pulsar = args.broker == "pulsar"
        args.url = os.environ.get("CONVEYOR_PULSAR_URL" if pulsar else "CONVEYOR_AMQP_URL",
                                  "pulsar://127.0.0.1:6650" if pulsar else "amqp://conveyor:conveyor@127.0.0.1:5672/")
    Console().print(render(asyncio.run(Bench(args).run()), args))


if __name__ == "__main__":
    main()
