"""``conveyor status``: depth, rate, oldest age, consumers, DLQ by reason, worker breakers."""

from __future__ import annotations

import asyncio
import io

import orjson
import pytest
from click.testing import CliRunner
from pydantic import BaseModel
from rich.console import Console

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import PermanentError, RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.breaker import BreakerConfig
from conveyor.consumer.cli import main
from conveyor.consumer.cli import status as status_cli
from conveyor.consumer.http import HealthServer
from conveyor.consumer.ops.status import collect_status, render_tables
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


async def test_status_reports_queues_dead_letters_by_reason_and_worker_breakers() -> None:
    broker = MemoryBroker()
    jobs = JobRegistry()

    @jobs.job("t.bad")
    async def bad(payload: Job, ctx: JobContext) -> None:
        raise PermanentError("bad input")

    @jobs.job("t.smtp", queue="mail", breaker="smtp", retry=RetryPolicy(max_attempts=1))
    async def smtp(payload: Job, ctx: JobContext) -> None:
        raise RetryableError("smtp down")

    transport = MemoryTransport(broker)
    await transport.connect()
    config = WorkerConfig(breaker=BreakerConfig(consecutive_failures=1, reset_timeout=600), metrics_interval=0)
    worker = Worker(transport, jobs, config=config)
    server = HealthServer(worker, "127.0.0.1", 0)
    await server.start()
    try:
        async with worker, Producer.for_registry(MemoryTransport(broker), jobs) as producer:
            await producer.publish("t.bad", Job(n=1))
            await producer.publish("t.bad", Job(n=2))
            await producer.publish("t.smtp", Job(n=3))
            await producer.transport.publish(DEFAULT_QUEUE, OutgoingMessage(body=b"{oops", message_id="poison"))
            await broker.join(DEFAULT_QUEUE)
            await broker.join("mail")
            await producer.transport.declare("idle")
            await producer.publish("t.bad", Job(n=4), queue="idle")

            async def publish_during_the_interval() -> None:
                await asyncio.sleep(0.15)
                for n in range(4):
                    await producer.publish("t.bad", Job(n=n), queue="idle")

            probe = MemoryTransport(broker)
            await probe.connect()
            filler = asyncio.create_task(publish_during_the_interval())
            report = await collect_status(
                probe, [DEFAULT_QUEUE, "mail", "idle", "missing"], interval=0.5,
                workers=[f"http://127.0.0.1:{server.port}", "http://127.0.0.1:9/metrics"],
            )
            await filler
            depth_after = broker.depth(DEFAULT_QUEUE + ".dlq")
    finally:
        await server.stop()

    default, mail, idle, missing = report.queues
    assert (default.ready, default.delayed, default.consumers, default.dead_letters) == (0, 0, 1, 3)
    assert default.dead_letters_by_reason == {"permanent": 2, "malformed": 1}
    assert depth_after == 3, "browsing the DLQ gives every entry back"
    assert mail.dead_letters_by_reason == {"exhausted": 1}
    assert mail.consumers == 0, "the smtp breaker is open: its queue is paused"
    assert (idle.ready, idle.consumers, idle.ready_rate_per_second) == (5, 0, 8.0)
    assert idle.oldest_age_seconds is not None and idle.oldest_age_seconds >= 0.5
    assert missing.error and "no queue" in missing.error and missing.reason == "queue_not_found"
    assert default.error is None and default.reason is None
    up, down = report.workers
    assert up.up and up.breakers == {"smtp": "open", "t.bad": "closed"}
    assert up.consumers_attached == 1 and up.jobs_per_second == 0
    assert not down.up and down.error

    console = Console(file=io.StringIO(), width=200)
    for table in render_tables(report, "memory://"):
        console.print(table)
    text = console.file.getvalue()
    assert "permanent 2, malformed 1" in text and "smtp open" in text and "no queue 'missing'" in text


def test_status_cli_prints_json_and_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # memory:// is a new, empty broker per command: this one has the queue declared.
    broker = MemoryBroker()
    broker.declare("q1")
    broker.declare("q1.dlq")
    monkeypatch.setattr(status_cli, "transport_for", lambda url, settings: MemoryTransport(broker))
    runner = CliRunner()
    result = runner.invoke(main, ["status", "--broker", "memory://", "--queue", "q1", "--interval", "0", "--json"])
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.output)
    assert data["broker"] == "memory://"
    assert data["queues"][0]["queue"] == "q1" and data["queues"][0]["error"] is None
    table = runner.invoke(main, ["status", "--broker", "memory://", "--queue", "q1", "--interval", "0"])
    assert table.exit_code == 0, table.output
    assert "Queues on memory://" in table.output


def test_status_cli_prints_the_whole_report_and_exits_1_when_a_queue_is_missing() -> None:
    """A mistyped queue is a row with its error, and the exit code a script checks is not 0."""
    runner = CliRunner()
    args = ["status", "--broker", "memory://", "--queue", "q1", "--queue", "q2", "--interval", "0"]
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 1, result.output
    data = orjson.loads(result.stdout)
    assert [q["reason"] for q in data["queues"]] == ["queue_not_found", "queue_not_found"]
    assert result.stderr.strip().splitlines() == [
        "Error: status (queue_not_found): 'q1' could not be read: QueueNotFound: no queue 'q1' (and 1 more)"]
    table = runner.invoke(main, args)
    assert table.exit_code == 1 and "Queues on memory://" in table.stdout


def test_status_tables_print_error_texts_with_brackets_as_they_are() -> None:
    # An error text went to rich inside markup: "[/x]" was a MarkupError traceback.
    from conveyor.consumer.ops.status import QueueStatus, StatusReport, WorkerStatus

    report = StatusReport(interval=0, queues=[QueueStatus("q1", error="refused [/x] [bold]")],
                          workers=[WorkerStatus("http://w:9464", error="404 for [/metrics]")])
    console = Console(file=io.StringIO(), width=200)
    for table in render_tables(report, "memory://"):
        console.print(table)
    text = console.file.getvalue()
    assert "refused [/x] [bold]" in text and "no: 404 for [/metrics]" in text
