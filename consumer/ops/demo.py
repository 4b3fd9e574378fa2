"""``conveyor demo``: the whole life of a job system in a few seconds, no server needed.

A worker on the embedded in-memory broker runs a few hundred jobs: most succeed, some
fail transiently and succeed on retry, some hit a dependency that stays broken until
"fixed", some are permanently invalid, and a few poison messages arrive. The DLQ is then
shown by reason, the cause is fixed, the DLQ is replayed, and every job is accounted for.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import PermanentError, RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.metrics import WorkerMetrics
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.breaker import BreakerConfig
from conveyor.consumer.ops.dead_letters import DeadLetterFilter, DeadLetters
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from conveyor.schemas.dead_letter import DeadLetterRecord

__all__ = ["WORKER_TARGET", "DemoRun", "DemoState", "build_jobs", "run_demo"]

# What the demo tells its user to run a worker with: a module:attr `conveyor worker` can load.
WORKER_TARGET = "conveyor.consumer.ops.demo:demo_jobs"

_FAST_RETRY = RetryPolicy(max_attempts=4, base=0.02, factor=2.0, cap=0.2)


class ResizeImage(BaseModel):
    image_id: int
    width: int


class ChargeCard(BaseModel):
    order_id: int
    cents: int


@dataclass
class DemoState:
    """The outside world the demo's handlers talk to."""

    payments_fixed: bool = False
    flaky: set[int] = field(default_factory=set)  # image ids that fail once, then work
    done: set[int] = field(default_factory=set)


@dataclass
class DemoRun:
    """What a finished demo hands to ``keep_up``: its broker, still running worker and producer."""

    broker: MemoryBroker
    jobs: JobRegistry
    state: DemoState
    worker: Worker
    producer: Producer


def build_jobs(state: DemoState) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.job("images.resize", retry=_FAST_RETRY, timeout=5)
    async def resize(payload: ResizeImage, ctx: JobContext) -> None:
        await asyncio.sleep(0.001)
        if payload.width <= 0:
            raise PermanentError("width must be positive")
        if payload.image_id in state.flaky:
            state.flaky.discard(payload.image_id)
            raise RetryableError("image service busy")

    @jobs.job("payments.charge", retry=_FAST_RETRY, timeout=5, breaker="payments-api")
    async def charge(payload: ChargeCard, ctx: JobContext) -> None:
        await asyncio.sleep(0.001)
        if payload.order_id % 7 == 0 and not state.payments_fixed:
            raise RetryableError("card processor rejected the request (bug in our client)")

    return jobs


async def run_demo(console: Console | None = None, *, jobs_count: int = 300, seed: int = 7,
                   keep_up: Callable[[DemoRun], Awaitable[None]] | None = None) -> dict[str, int]:
    """``keep_up``: awaited after the final accounting while the broker, worker and producer are
    still up (``conveyor demo --console`` serves the console there until interrupted)."""
    console = console or Console()
    rng = random.Random(seed)
    state = DemoState()
    jobs = build_jobs(state)
    broker = MemoryBroker()
    worker_transport = MemoryTransport(broker)
    await worker_transport.connect()
    config = WorkerConfig(concurrency=32, breaker=BreakerConfig(consecutive_failures=1000, min_calls=10**6))
    published = 0
    metrics = WorkerMetrics()  # one set for the producer and the worker: what the console's rates read
    console.print("[bold]Conveyor demo[/] — embedded in-memory broker, no server needed\n")
    async with Producer.for_registry(MemoryTransport(broker), jobs, metrics=metrics) as producer:
        async with Worker(worker_transport, jobs, config=config, rng=rng, metrics=metrics) as worker:
            with _progress(console) as progress:
                task = progress.add_task("processing", total=jobs_count)
                for i in range(jobs_count):
                    if i % 3 == 0:
                        await producer.publish("payments.charge", ChargeCard(order_id=i, cents=100 + i))
                    else:
                        width = -1 if i % 50 == 1 else 640
                        if rng.random() < 0.2:
                            state.flaky.add(i)
                        await producer.publish("images.resize", ResizeImage(image_id=i, width=width))
                    published += 1
                for body in (b"{not json", b'{"job_id": "x", "job_id": "y"}', b"\xff\xfe"):
                    await producer.transport.publish(DEFAULT_QUEUE, OutgoingMessage(body=body, message_id="poison"))
                while True:
                    settled = worker.counts["succeeded"] + worker.counts["dead_lettered"]
                    progress.update(task, completed=min(settled, jobs_count))
                    if broker.in_flight(DEFAULT_QUEUE) == 0 and broker.depth(DEFAULT_QUEUE) == 0:
                        break
                    await asyncio.sleep(0.05)
            dlq = DeadLetters(producer.transport, DEFAULT_QUEUE)
            records = await dlq.list(limit=10_000)
            poison = sum(1 for r in records if r.job_id is None)
            console.print(_accounting("After the first run", published, worker.counts, len(records) - poison, poison))
            console.print(_dlq_table(records))
            console.print("\nFixing the payments client, then: [bold]conveyor dlq replay --reason exhausted[/]")
            state.payments_fixed = True
            report = await dlq.replay(DeadLetterFilter(reason="exhausted"))
            await broker.join(DEFAULT_QUEUE)
            final = dict(worker.counts)
            remaining = await dlq.depth()
            console.print(f"replayed {report.replayed} entries\n")
            console.print(_accounting("Final accounting", published, final, remaining - poison, poison))
            if keep_up is not None:
                await keep_up(DemoRun(broker, jobs, state, worker, producer))
    console.print(
        f"\nNext: run a worker on RabbitMQ with [bold]conveyor worker {WORKER_TARGET} "
        "--broker amqp://…[/]; metrics on http://127.0.0.1:9464/metrics"
    )
    console.print(
        "Dashboards: deploy/grafana/dashboards ([bold]docker compose up -d[/] → Grafana on http://localhost:3000); "
        "alerts: deploy/prometheus/rules; runbook: docs/runbook.md"
    )
    return {"published": published, **final, "dlq_remaining": remaining, "replayed": report.replayed}


def demo_jobs() -> JobRegistry:
    """The demo's handlers, for ``conveyor worker conveyor.consumer.ops.demo:demo_jobs``."""
    return build_jobs(DemoState())


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=False,
    )


def _accounting(title: str, published: int, counts: dict[str, int], dlq_jobs: int, poison: int) -> Table:
    table = Table(title=title)
    for column in ("published", "succeeded", "retries", "dead-lettered jobs", "poison messages", "accounted for"):
        table.add_column(column, justify="right")
    accounted = counts.get("succeeded", 0) + dlq_jobs
    mark = "✓" if accounted == published else "✗ MISMATCH"
    table.add_row(
        str(published),
        str(counts.get("succeeded", 0)),
        str(counts.get("retried", 0)),
        str(dlq_jobs),
        str(poison),
        f"{accounted}/{published} {mark}",
    )
    return table


def _dlq_table(records: list[DeadLetterRecord]) -> Table:
    groups: dict[str, list[str]] = {}
    for record in records:
        groups.setdefault(record.reason, []).append(record.job_type or "—")
    table = Table(title="Dead-letter queue by reason")
    table.add_column("reason")
    table.add_column("count", justify="right")
    table.add_column("job types")
    for reason, types in sorted(groups.items()):
        table.add_row(reason, str(len(types)), ", ".join(sorted(set(types))))
    return table
