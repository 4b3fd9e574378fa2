"""The ``conveyor`` command line: demo, worker, publish, dlq, status.

Every option also reads a ``CONVEYOR_*`` environment variable (see ``common.settings``);
flags win. Broker URLs are masked whenever they are shown.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from common.codec import strict_json_loads
from common.errors import ConveyorError
from common.logging import configure_logging
from common.settings import Settings
from common.transport.factory import mask_url, transport_from_url
from consumer.dead_letters import DeadLetterFilter, DeadLetters
from consumer.registry import DEFAULT_QUEUE, JobRegistry

__all__ = ["main"]

T = TypeVar("T")
_console = Console()


def _run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except ConveyorError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


def _load_registry(target: str) -> JobRegistry:
    """``package.module[:attr]``; attr defaults to ``jobs`` and may be a factory function."""
    module_name, _, attr = target.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    module = importlib.import_module(module_name)
    value: Any = getattr(module, attr or "jobs")
    if callable(value) and not isinstance(value, JobRegistry):
        value = value()
    if not isinstance(value, JobRegistry):
        raise click.ClickException(f"{target} is not a JobRegistry")
    return value


broker_option = click.option(
    "--broker", envvar="CONVEYOR_BROKER_URL", default="memory://", show_default=True,
    help="Broker URL: memory://, amqp://…, pulsar://…",
)
queue_option = click.option("--queue", default=DEFAULT_QUEUE, show_default=True, help="Work queue name")


@click.group()
@click.option("--log-level", envvar="CONVEYOR_LOG_LEVEL", default="WARNING", show_default=True)
@click.option("--log-format", envvar="CONVEYOR_LOG_FORMAT", type=click.Choice(["json", "text"]), default="json")
def main(log_level: str, log_format: str) -> None:
    """Conveyor: reliable, schema-versioned background jobs."""
    configure_logging(log_level, log_format)


@main.command()
@click.option("--jobs", "jobs_count", default=300, show_default=True, help="How many jobs to publish")
def demo(jobs_count: int) -> None:
    """Run the whole job life cycle on the embedded broker (no server needed)."""
    import logging

    from consumer.demo import run_demo

    logging.getLogger().setLevel(logging.ERROR)  # the demo's tables tell the story
    _run(run_demo(_console, jobs_count=jobs_count))


@main.command()
@click.argument("target")
@broker_option
@click.option("--concurrency", type=int, default=None, help="Jobs at once [env CONVEYOR_CONCURRENCY, 16]")
@click.option("--prefetch", type=int, default=None, help="Unacked deliveries held [default: concurrency]")
@click.option("--grace-period", type=float, default=None, help="Seconds to finish jobs on SIGTERM [30]")
@click.option("--http-host", default=None, help="Health/metrics address [127.0.0.1]")
@click.option("--http-port", type=int, default=None, help="Health/metrics port, 0 to disable [9464]")
def worker(target: str, broker: str, **overrides: Any) -> None:
    """Run the handlers registered in TARGET (module[:attr]) until SIGTERM/SIGINT."""
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    registry = _load_registry(target)
    _run(_worker_main(registry, broker, settings))


async def _worker_main(registry: JobRegistry, broker: str, settings: Settings) -> None:
    from consumer.http import HealthServer
    from consumer.worker import Worker, WorkerConfig

    config = WorkerConfig(
        concurrency=settings.concurrency,
        prefetch=settings.prefetch,
        grace_period=settings.grace_period,
        max_message_bytes=settings.max_message_bytes,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    transport = transport_from_url(broker)
    async with transport:
        async with Worker(transport, registry, config=config) as running:
            http = HealthServer(running, settings.http_host, settings.http_port) if settings.http_port else None
            if http:
                await http.start()
            _console.print(
                f"worker {config.worker_id} consuming {', '.join(registry.queues())} on {mask_url(broker)}"
                + (f"; http://{settings.http_host}:{http.port}/metrics" if http else ""),
                highlight=False,
            )
            await stop.wait()
            _console.print("draining…")
            await running.drain()
            if http:
                await http.stop()
    _console.print("stopped")


@main.command()
@click.argument("job_type")
@click.option("--payload", required=True, help="JSON object, or @file to read it from a file")
@broker_option
@click.option("--app", default=None, help="module[:attr] of a JobRegistry to validate against")
@click.option("--queue", default=None, help="Target queue [from --app, else conveyor.default]")
@click.option("--version", "schema_version", type=int, default=None, help="Schema version [latest]")
@click.option("--idempotency-key", default=None)
@click.option("--delay", type=float, default=0.0, help="Seconds before the job may run")
@click.option("--header", "headers", multiple=True, help="name=value, repeatable")
def publish(job_type: str, payload: str, broker: str, app: str | None, queue: str | None,
            schema_version: int | None, idempotency_key: str | None, delay: float, headers: tuple[str, ...]) -> None:
    """Publish one job and wait for the broker's confirm."""
    from producer.producer import Producer

    raw = Path(payload[1:]).read_bytes() if payload.startswith("@") else payload.encode()
    data = strict_json_loads(raw)
    if not isinstance(data, dict):
        raise click.ClickException("--payload must be a JSON object")
    header_map = dict(h.split("=", 1) for h in headers)

    async def go() -> None:
        transport = transport_from_url(broker)
        if app:
            producer = Producer.for_registry(transport, _load_registry(app))
        else:
            producer = Producer(transport, allow_unregistered=True)
        async with producer:
            receipt = await producer.publish(
                job_type, data, idempotency_key=idempotency_key, delay=delay, headers=header_map,
                version=schema_version, queue=queue,
            )
        click.echo(orjson.dumps({"job_id": receipt.job_id, "queue": receipt.queue, "confirmed": True}).decode())

    _run(go())


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


def _filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--reason", default=None, help="Only entries with this reason code")(fn)
    fn = click.option("--job-type", default=None, help="Only entries of this job type")(fn)
    return fn


async def _with_dlq(broker: str, queue: str, action: Callable[[DeadLetters], Awaitable[T]]) -> T:
    transport = transport_from_url(broker)
    async with transport:
        await transport.declare(queue)
        return await action(DeadLetters(transport, queue))


@dlq.command("list")
@broker_option
@queue_option
@_filters
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line")
def dlq_list(broker: str, queue: str, reason: str | None, job_type: str | None, limit: int, as_json: bool) -> None:
    """List dead letters (they stay in the DLQ)."""
    records = _run(_with_dlq(broker, queue, lambda d: d.list(DeadLetterFilter(reason, job_type), limit=limit)))
    if as_json:
        for record in records:
            click.echo(record.model_dump_json(exclude={"traceback", "original_body_b64"}))
        return
    table = Table(title=f"DLQ of {queue}: {len(records)} shown")
    for column in ("id", "job id", "job type", "reason", "error", "attempts", "when"):
        table.add_column(column)
    for r in records:
        table.add_row(r.dead_letter_id, r.job_id or "—", r.job_type or "—", r.reason,
                      f"{r.error_type or ''}: {(r.error_message or '')[:60]}", str(len(r.history)),
                      r.dead_lettered_at.isoformat(timespec="seconds"))
    _console.print(table)


@dlq.command("show")
@click.argument("entry_id")
@broker_option
@queue_option
def dlq_show(entry_id: str, broker: str, queue: str) -> None:
    """Show one dead letter in full (by dead-letter id or job id)."""
    record = _run(_with_dlq(broker, queue, lambda d: d.show(entry_id)))
    if record is None:
        raise click.ClickException(f"no dead letter {entry_id!r} in {queue}")
    data = record.model_dump(mode="json")
    try:  # show the original as JSON when it is JSON; poison stays a (replaced) string
        data["original_body"] = strict_json_loads(record.original_body, max_bytes=len(record.original_body) + 1)
    except ConveyorError:
        data["original_body"] = record.original_body.decode("utf-8", "replace")
    del data["original_body_b64"]
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


@dlq.command("replay")
@broker_option
@queue_option
@_filters
@click.option("--limit", type=int, default=None, help="Replay at most N entries")
@click.option("--rate", type=float, default=None, help="At most N entries per second")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing")
def dlq_replay(broker: str, queue: str, reason: str | None, job_type: str | None, limit: int | None,
               rate: float | None, dry_run: bool) -> None:
    """Republish dead letters with a fresh attempt budget (same job id and history)."""
    async def go(d: DeadLetters) -> Any:
        total = await d.depth()
        with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), console=_console,
                      disable=dry_run or total < 20) as progress:
            task = progress.add_task("replay", total=min(total, limit or total))
            return await d.replay(DeadLetterFilter(reason, job_type), limit=limit, rate=rate, dry_run=dry_run,
                                  progress=lambda r: progress.update(task, completed=r.matched))

    report = _run(_with_dlq(broker, queue, go))
    verb = "would replay" if dry_run else "replayed"
    count = report.matched if dry_run else report.replayed
    click.echo(f"{verb} {count} of {report.matched} matching entries"
               + (f"; {report.skipped_unreplayable} unreplayable (never decoded) kept" if report.skipped_unreplayable else ""))
    for reason_code, n in sorted(report.by_reason.items()):
        click.echo(f"  {reason_code}: {n}")


@dlq.command("purge")
@broker_option
@queue_option
@_filters
@click.option("--yes", is_flag=True, help="Really delete; without it nothing is removed")
def dlq_purge(broker: str, queue: str, reason: str | None, job_type: str | None, yes: bool) -> None:
    """Delete matching dead letters for good."""
    if not yes:
        raise click.ClickException("purge deletes dead letters for good: add --yes")
    removed = _run(_with_dlq(broker, queue, lambda d: d.purge(DeadLetterFilter(reason, job_type))))
    click.echo(f"purged {removed} entries")


@main.command()
@broker_option
@click.option("--queue", "queues", multiple=True, default=[DEFAULT_QUEUE], show_default=True)
@click.option("--json", "as_json", is_flag=True)
def status(broker: str, queues: tuple[str, ...], as_json: bool) -> None:
    """Queue depths and dead-letter counts."""
    async def go() -> list[dict[str, Any]]:
        transport = transport_from_url(broker)
        rows = []
        async with transport:
            for queue in queues:
                await transport.declare(queue)
                rows.append({"queue": queue, "ready": await transport.depth(queue),
                             "dead_letters": await transport.depth(transport.dead_letter_queue(queue))})
        return rows

    rows = _run(go())
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    table = Table(title=f"Queues on {mask_url(broker)}")
    for column in ("queue", "ready", "dead letters"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["queue"], str(row["ready"]), str(row["dead_letters"]))
    _console.print(table)


if __name__ == "__main__":
    main()
