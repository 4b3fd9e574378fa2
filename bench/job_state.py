"""``python -m bench.job_state``: drain with the PostgreSQL job-state store on versus off.

N jobs are published to a fresh RabbitMQ queue (not timed), then one in-process ``Worker``
(concurrency = prefetch = ``--concurrency``) drains them, once without a job-state store and
once with a ``PostgresJobStateStore`` (tables of their own, dropped afterwards), in ABBA order
``--repeat`` times; the best rate of each side and the ratio (goal ≥ 0.7) are shown, with the
CPU µs per job of this process and how many transitions the writer wrote (every one of a
drained job must be in the store when the drain is timed as over: the writer is flushed first).

Needs CONVEYOR_AMQP_URL and CONVEYOR_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from dataclasses import dataclass

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from bench.support import run_windowed
from conveyor.common.job_state import PostgresJobStateStore
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.consumer.middleware.job_state import JobStateConfig
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer

__all__ = ["main"]


class Tick(BaseModel):
    n: int


@dataclass
class Sample:
    store: bool
    jobs: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


async def one_drain(url: str, database_url: str | None, jobs: int, concurrency: int, flush: float) -> Sample:
    queue = f"bench.jobstate.{uuid.uuid4().hex[:10]}"
    registry = JobRegistry()

    @registry.job("bench.tick", queue=queue)
    async def tick(payload: Tick, ctx: JobContext) -> None:
        return None

    async with Producer.for_registry(RabbitMQTransport(url), registry) as producer:
        await run_windowed(lambda i: producer.publish("bench.tick", Tick(n=i)), jobs, 100)
    store = None if database_url is None else PostgresJobStateStore(
        database_url, table_prefix=f"b{uuid.uuid4().hex[:10]}_"
    )
    transport = RabbitMQTransport(url)
    await transport.connect()
    try:
        config = WorkerConfig(concurrency=concurrency, metrics_interval=0)
        worker = Worker(transport, registry, config=config, job_state=store,
                        job_state_config=JobStateConfig(flush_interval=flush))
        if store is not None:
            await store.open()  # the schema set-up is not part of the drain (the worker's open is then a no-op)
        begin, cpu = time.perf_counter(), time.process_time()
        async with worker:
            while worker.counts["succeeded"] < jobs:
                await asyncio.sleep(0.01)
            if worker.job_state is not None:
                await worker.job_state.writer.flush()  # the states are in the store: part of the drain
            seconds, used = time.perf_counter() - begin, time.process_time() - cpu
        if store is not None:
            async with store:
                done = await store.list_jobs(limit=min(jobs, 10_000))
                assert all(r.state.value == "succeeded" for r in done) and len(done) == min(jobs, 10_000)
                await store.drop_schema()
        await transport.delete(queue)
    finally:
        await transport.close()
    return Sample(store is not None, jobs, seconds, used)


async def run(args: argparse.Namespace) -> list[Sample]:
    url, database_url = os.environ["CONVEYOR_AMQP_URL"], os.environ["CONVEYOR_DATABASE_URL"]
    samples = []
    for i in range(args.repeat):
        order = (False, True) if i % 2 == 0 else (True, False)  # ABBA
        for with_store in order:
            samples.append(await one_drain(url, database_url if with_store else None, args.jobs, args.concurrency,
                                           args.flush_interval))
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.job_state", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5_000, help="jobs per drain (default 5,000)")
    parser.add_argument("--concurrency", type=int, default=64, help="worker concurrency = prefetch (default 64)")
    parser.add_argument("--flush-interval", type=float, default=1.0,
                        help="seconds between the writer's batches (default 1, as the worker's)")
    parser.add_argument("--repeat", type=int, default=2, help="drains per side, ABBA order; best shown (default 2)")
    args = parser.parse_args(argv)
    samples = asyncio.run(run(args))
    best = {side: max((s for s in samples if s.store is side), key=lambda s: s.rate) for side in (False, True)}
    table = Table(title=f"drain, RabbitMQ, {args.jobs} jobs, concurrency {args.concurrency}, best of {args.repeat}")
    for column in ("job-state store", "jobs/s", "CPU µs/job", "all samples jobs/s"):
        table.add_column(column, justify="left" if column == "job-state store" else "right")
    for side in (False, True):
        rates = ", ".join(f"{s.rate:,.0f}" for s in samples if s.store is side)
        table.add_row("PostgreSQL" if side else "off", f"{best[side].rate:,.0f}",
                      f"{best[side].cpu / best[side].jobs * 1e6:,.0f}", rates)
    console = Console()
    console.print(table)
    console.print(f"on / off = {best[True].rate / best[False].rate:.2f} (goal ≥ 0.70)")


if __name__ == "__main__":
    main()
