"""The ``conveyor`` command line: demo, worker, publish, dlq, payloads, status.

Every option also reads a ``CONVEYOR_*`` environment variable (see ``common.settings``);
flags win. Broker URLs are masked whenever they are shown, and every secret a command knows
is masked in its logs and errors; a password typed as a flag gets a ``ps`` warning
(``consumer.cli_secrets``).
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
from common.transport.base import Transport
from common.transport.factory import mask_url, transport_from_url
from consumer.cli_secrets import DEFAULT_BROKER, broker_from_environment, protect, redactor, warn_if_credentials
from consumer.dead_letters import DeadLetterFilter, DeadLetters
from consumer.registry import DEFAULT_QUEUE, JobRegistry

__all__ = ["main"]

T = TypeVar("T")
_console = Console()


def _run(coro: Awaitable[T], *, secrets: bool = True) -> T:
    """Run a command's coroutine; first, mask every secret it knows (env, files, its flags)."""
    try:
        if secrets:
            params = click.get_current_context().params
            protect(None, params.get("broker"), params.get("idempotency_url"))
        return asyncio.run(coro)  # type: ignore[arg-type]
    except ConveyorError as exc:
        raise click.ClickException(redactor()(f"{type(exc).__name__}: {exc}")) from None


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment and flags; a bad value is a one-line usage error naming
    the setting, never a traceback and never the value (it may be a secret)."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"CONVEYOR_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}" for error in exc.errors()
        )
        raise click.UsageError(f"invalid configuration: {problems}") from None


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
    "--broker", envvar="CONVEYOR_BROKER_URL", default=None, show_default=DEFAULT_BROKER,
    callback=broker_from_environment,
    help="Broker URL: memory://, amqp://…, pulsar://… [env CONVEYOR_BROKER_URL or CONVEYOR_BROKER_URL_FILE; "
         "a password here shows in ps]",
)
queue_option = click.option("--queue", default=DEFAULT_QUEUE, show_default=True, help="Work queue name")
payload_store_option = click.option(
    "--payload-store", default=None,
    help="Claim-check store: file:///path, s3://bucket/prefix [env CONVEYOR_PAYLOAD_STORE; unset: off]",
)


def _tracing(settings: Settings, service: str) -> tuple[list[Any], Any]:
    """Middlewares and tracer provider for CONVEYOR_TRACING=otlp|console (needs conveyor[otel])."""
    if settings.tracing == "off":
        return [], None
    from common.tracing import TracingMiddleware, configure_tracing

    return [TracingMiddleware()], configure_tracing(service, settings.tracing)


def _transport(broker: str, settings: Settings | None = None) -> Transport:
    """The broker's transport; amqps:// and pulsar+ssl:// get the CONVEYOR_TLS_* settings."""
    return transport_from_url(broker, tls=(settings or _settings()).tls())


def _payload_store(settings: Settings) -> Any:
    from common.payload_store.factory import store_from_settings

    return store_from_settings(settings)


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
    _run(run_demo(_console, jobs_count=jobs_count), secrets=False)


@main.command()
@click.argument("target")
@broker_option
@click.option("--concurrency", type=int, default=None, help="Jobs at once [env CONVEYOR_CONCURRENCY, 16]")
@click.option("--prefetch", type=int, default=None, help="Unacked deliveries held [default: concurrency]")
@click.option("--grace-period", type=float, default=None, help="Seconds to finish jobs on SIGTERM [30]")
@click.option("--http-host", default=None, help="Health/metrics address [127.0.0.1]")
@click.option("--http-port", type=int, default=None, help="Health/metrics port, 0 to disable [9464]")
@payload_store_option
@click.option("--idempotency-url", default=None, callback=warn_if_credentials,
              help="Processed-key store: sqlite:///path or postgresql://… [env CONVEYOR_IDEMPOTENCY_URL or "
                   "CONVEYOR_IDEMPOTENCY_URL_FILE; off]")
def worker(target: str, broker: str, **overrides: Any) -> None:
    """Run the handlers registered in TARGET (module[:attr]) until SIGTERM/SIGINT."""
    settings = _settings(**{k: v for k, v in overrides.items() if v is not None})
    registry = _load_registry(target)
    _run(_worker_main(registry, broker, settings))


async def _worker_main(registry: JobRegistry, broker: str, settings: Settings) -> None:
    from consumer.http import HealthServer
    from consumer.breaker import BreakerConfig
    from consumer.watchdog import WatchdogConfig
    from consumer.worker import Worker, WorkerConfig

    config = WorkerConfig(
        concurrency=settings.concurrency,
        prefetch=settings.prefetch,
        grace_period=settings.grace_period,
        max_message_bytes=settings.max_message_bytes,
        metrics_interval=settings.metrics_interval,
        breaker=BreakerConfig(
            consecutive_failures=settings.breaker_consecutive_failures,
            reset_timeout=settings.breaker_reset_timeout,
        ),
        watchdog=WatchdogConfig(
            warn_after=settings.stall_warn_after,
            exit_after=settings.stall_exit_after or None,
        ),
    )
    middlewares, tracer_provider = _tracing(settings, "conveyor-worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    transport = _transport(broker, settings)
    store = _payload_store(settings)
    keys = None
    if settings.idempotency_url is not None:
        from common.idempotency import store_from_url

        keys = store_from_url(settings.idempotency_url.get_secret_value())
    async with transport:
        async with Worker(transport, registry, config=config, payload_store=store, middlewares=middlewares,
                          idempotency=keys, redact=redactor()) as running:
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
    if store is not None:
        await store.close()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # flush the last spans
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
@payload_store_option
def publish(job_type: str, payload: str, broker: str, app: str | None, queue: str | None,
            schema_version: int | None, idempotency_key: str | None, delay: float, headers: tuple[str, ...],
            payload_store: str | None) -> None:
    """Publish one job and wait for the broker's confirm (large payloads go to the payload store)."""
    from producer.producer import Producer

    settings = _settings(**({"payload_store": payload_store} if payload_store else {}))
    store_options = {"payload_threshold": settings.payload_threshold_bytes}

    raw = Path(payload[1:]).read_bytes() if payload.startswith("@") else payload.encode()
    data = strict_json_loads(raw)
    if not isinstance(data, dict):
        raise click.ClickException("--payload must be a JSON object")
    header_map = dict(h.split("=", 1) for h in headers)

    async def go() -> None:
        transport = _transport(broker, settings)
        store = _payload_store(settings)
        middlewares, tracer_provider = _tracing(settings, "conveyor-publish")
        options: dict[str, Any] = {"payload_store": store, "middlewares": middlewares, **store_options}
        if app:
            producer = Producer.for_registry(transport, _load_registry(app), **options)
        else:
            producer = Producer(transport, allow_unregistered=True, **options)
        try:
            async with producer:
                receipt = await producer.publish(
                    job_type, data, idempotency_key=idempotency_key, delay=delay, headers=header_map,
                    version=schema_version, queue=queue,
                )
        finally:
            if store is not None:
                await store.close()
            if tracer_provider is not None:
                tracer_provider.shutdown()
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
    transport = _transport(broker)
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
@payload_store_option
def dlq_purge(broker: str, queue: str, reason: str | None, job_type: str | None, yes: bool,
              payload_store: str | None) -> None:
    """Delete matching dead letters for good, with their stored payloads."""
    if not yes:
        raise click.ClickException("purge deletes dead letters for good: add --yes")
    settings = _settings(**({"payload_store": payload_store} if payload_store else {}))

    async def go() -> tuple[int, int]:
        from consumer.payloads import PayloadResolver

        store = _payload_store(settings)
        transport = _transport(broker, settings)
        try:
            async with transport:
                await transport.declare(queue)
                letters = DeadLetters(transport, queue, payloads=PayloadResolver.for_store(store))
                removed = await letters.purge(DeadLetterFilter(reason, job_type))
                return removed, letters.payloads_deleted
        finally:
            if store is not None:
                await store.close()

    removed, deleted = _run(go())
    click.echo(f"purged {removed} entries; deleted {deleted} stored payloads")


@main.group()
def payloads() -> None:
    """Maintain the claim-check payload store."""


@payloads.command("sweep")
@click.option("--older-than", required=True,
              help="Age of orphans: 90m, 12h, 7d, 2w (must exceed max job age + DLQ retention)")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing")
@payload_store_option
def payloads_sweep(older_than: str, dry_run: bool, payload_store: str | None) -> None:
    """Delete stored payloads older than --older-than (orphans: see the README's rule)."""
    from datetime import UTC, datetime

    from consumer.payload_sweep import parse_age, sweep

    settings = _settings(**({"payload_store": payload_store} if payload_store else {}))

    async def go() -> Any:
        age = parse_age(older_than)
        store = _payload_store(settings)
        if store is None:
            raise click.ClickException("no payload store configured: set CONVEYOR_PAYLOAD_STORE or --payload-store")
        try:
            return await sweep(store, age, now=datetime.now(UTC), dry_run=dry_run)
        finally:
            await store.close()

    report = _run(go())
    verb = "would delete" if dry_run else "deleted"
    count = report.orphans if dry_run else report.deleted
    click.echo(f"scanned {report.scanned} objects; {verb} {count} older than {older_than} "
               f"({report.orphan_bytes} bytes)" + (f"; {report.failed} deletes failed" if report.failed else ""))
    if report.failed:
        sys.exit(1)


@main.command()
@broker_option
@click.option("--queue", "queues", multiple=True, default=[DEFAULT_QUEUE], show_default=True,
              help="Work queue, repeatable")
@click.option("--worker", "workers", multiple=True, metavar="URL",
              help="A worker's metrics endpoint (http://host:9464), repeatable: breakers, in flight, jobs/s")
@click.option("--interval", type=float, default=2.0, show_default=True,
              help="Seconds between the two samples rates are computed from (0: one sample, no rates)")
@click.option("--dlq-scan-limit", type=int, default=1000, show_default=True,
              help="Dead letters browsed per queue to group them by reason")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tables")
def status(broker: str, queues: tuple[str, ...], workers: tuple[str, ...], interval: float, dlq_scan_limit: int,
           as_json: bool) -> None:
    """Queues (depth, rate, oldest age, consumers, dead letters by reason) and workers (breakers)."""
    from consumer.status import collect_status, render_tables

    async def go() -> Any:
        transport = _transport(broker)
        async with transport:
            return await collect_status(transport, list(queues), interval=interval, workers=list(workers),
                                        dlq_scan_limit=dlq_scan_limit)

    report = _run(go())
    if as_json:
        click.echo(orjson.dumps({"broker": mask_url(broker), **report.to_dict()}).decode())
        return
    for table in render_tables(report, mask_url(broker)):
        _console.print(table)


if __name__ == "__main__":
    main()
