"""``conveyor outbox migrate | check | relay | failed | requeue``: the outbox's table, its relay, refused rows.

``relay`` runs until SIGTERM/SIGINT (the batch in progress may finish and commit within
``--shutdown-grace``; past it, it rolls back and its rows go again) and serves ``/metrics``,
``/healthz`` and ``/readyz`` on ``--http-port`` (0: off; see ``outbox_http``). Several relays may run at
once (``FOR UPDATE SKIP LOCKED``). Errors are one line: a missing table or column names what
is missing; an unreachable database names the exception type, with its password masked.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import click

from conveyor.common.errors import ConfigurationError
from conveyor.common.secrets import secret_from_file
from conveyor.consumer.cli import support
from conveyor.consumer.cli.secrets import redactor, warn_if_credentials

__all__ = ["outbox"]

T = TypeVar("T")

def _database_from_environment(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Flag, else CONVEYOR_OUTBOX_DATABASE_URL, else its _FILE (a mounted secret); a password
    typed as a flag gets the ps warning."""
    warn_if_credentials(ctx, param, value)
    try:
        from_file = secret_from_file("CONVEYOR_OUTBOX_DATABASE_URL")
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value or from_file


database_option = click.option(
    "--database-url", envvar="CONVEYOR_OUTBOX_DATABASE_URL", default=None, callback=_database_from_environment,
    help="PostgreSQL URL of the application's database [required: this or env CONVEYOR_OUTBOX_DATABASE_URL "
         "or CONVEYOR_OUTBOX_DATABASE_URL_FILE; a password here shows in ps]",
)
table_option = click.option("--table", default="conveyor_outbox", show_default=True, help="Outbox table name")


@click.group()
def outbox() -> None:
    """The transactional outbox on PostgreSQL: migrate, check, relay, failed, requeue."""


def _url(database_url: str | None) -> str:
    if not database_url:
        raise click.UsageError("no database: pass --database-url or set CONVEYOR_OUTBOX_DATABASE_URL")
    return database_url


def _run(work: Callable[[], Awaitable[T]], settings: Any = None, *, serving: bool = False) -> T:
    """Run ``work`` with the command's secrets (--database-url too) masked; a database failure is one line."""
    settings = settings or support.settings_from()

    async def guarded() -> T:
        import asyncpg

        try:
            return await work()
        # OverflowError: the socket's answer to a port past 65535.
        except (OSError, OverflowError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise click.ClickException(
                redactor()(f"database error ({type(exc).__name__}): {exc}".splitlines()[0])
            ) from None

    return support.run(guarded(), settings, serving=serving)


async def _connect(url: str) -> Any:
    import asyncpg

    return await asyncpg.connect(url, timeout=15)


@outbox.command()
@database_option
@table_option
def migrate(database_url: str | None, table: str) -> None:
    """Create (or complete) the outbox table, its indexes and its NOTIFY trigger. Idempotent."""
    from conveyor.producer.outbox.schema import check_schema
    from conveyor.producer.outbox.schema import migrate as run_migration

    url = _url(database_url)

    async def go() -> None:
        connection = await _connect(url)
        try:
            await run_migration(connection, table)
            await check_schema(connection, table)
        finally:
            await connection.close()

    _run(go)
    click.echo(f"outbox table {table} is ready")


@outbox.command()
@database_option
@table_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1), help="Rows to show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row")
def failed(database_url: str | None, table: str, limit: int, as_json: bool) -> None:
    """The rows the relay refused (failed, never sent): id, job id, type, queue and the error."""
    from conveyor.producer.outbox.admin import failed_rows

    url = _url(database_url)

    async def go() -> list[Any]:
        connection = await _connect(url)
        try:
            return await failed_rows(connection, table, limit=limit)
        finally:
            await connection.close()

    from dataclasses import asdict

    import orjson

    for row in _run(go):
        if as_json:
            click.echo(orjson.dumps(asdict(row)).decode())
        else:
            click.echo(f"{row.id}  {row.job_id}  {row.job_type}  {row.queue}  attempts={row.attempts}  "
                       f"{row.failed_at:%Y-%m-%dT%H:%M:%SZ}  {row.last_error}")


@outbox.command()
@database_option
@table_option
@click.option("--id", "ids", type=int, multiple=True, help="A failed row's id (repeat); none: every failed row")
def requeue(database_url: str | None, table: str, ids: tuple[int, ...]) -> None:
    """Give failed rows back to the relay (same job id); idempotent: a second run requeues nothing."""
    from conveyor.producer.outbox.admin import requeue_failed

    url = _url(database_url)

    async def go() -> int:
        connection = await _connect(url)
        try:
            return await requeue_failed(connection, table, ids=list(ids) if ids else None)
        finally:
            await connection.close()

    click.echo(f"requeued {_run(go)} failed row(s) of {table}")


@outbox.command()
@database_option
@table_option
def check(database_url: str | None, table: str) -> None:
    """Exit 0 if the outbox schema is complete; else one line naming what is missing."""
    from conveyor.producer.outbox.schema import check_schema

    url = _url(database_url)

    async def go() -> None:
        connection = await _connect(url)
        try:
            await check_schema(connection, table)
        finally:
            await connection.close()

    _run(go)
    click.echo(f"outbox table {table} is complete")


@outbox.command()
@database_option
@table_option
@support.broker_option
@click.option("--batch-size", default=200, show_default=True, help="Rows per batch (one transaction)")
@click.option("--poll-interval", default=5.0, show_default=True, help="Seconds between polls when no NOTIFY arrives")
@click.option("--retention-hours", default=24.0, show_default=True, help="Delete sent rows older than this")
@click.option("--shutdown-grace", default=10.0, show_default=True,
              help="Seconds a SIGTERM waits for the batch in progress (then its rows stay unsent)")
@click.option("--http-port", default=9465, show_default=True, help="/metrics and /healthz (0: off)")
@click.option("--http-host", default="127.0.0.1", show_default=True)
@support.payload_store_option
def relay(database_url: str | None, table: str, broker: str | None, batch_size: int, poll_interval: float,
          retention_hours: float, shutdown_grace: float, http_port: int, http_host: str,
          payload_store: str | None) -> None:
    """Publish committed outbox rows with confirms and mark them sent, until SIGTERM."""
    from conveyor.consumer.cli.outbox_http import RelayHttp
    from conveyor.producer.outbox.relay import OutboxRelay, RelayConfig
    from conveyor.producer.producer import Producer

    url = _url(database_url)
    settings = support.settings_from(**({"payload_store": payload_store} if payload_store else {}))
    broker_url = support.require_broker(broker)

    async def go() -> None:
        # Built inside the command's run: a bad setting is its one-line ConfigurationError.
        config = RelayConfig(table=table, batch_size=batch_size, poll_interval=poll_interval,
                             retention=timedelta(hours=retention_hours), shutdown_grace=shutdown_grace)
        store = support.payload_store_for(settings)
        # The broker URL is checked once, here: built only inside the relay's loop, a URL of no
        # known kind was an "outage" retried forever (one warning per backoff, never an exit).
        support.transport_for(broker_url, settings)

        def producer() -> Producer:
            return Producer(support.transport_for(broker_url, settings), allow_unregistered=True,
                            payload_store=store, payload_threshold=settings.payload_threshold_bytes,
                            max_message_bytes=settings.max_message_bytes)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        relay = OutboxRelay(url, producer, config=config)
        http = RelayHttp(relay, http_host, http_port) if http_port else None
        try:
            if http is not None:
                await http.start()
            async with relay:
                click.echo(f"outbox relay: table {table} checked, relaying", err=True)
                await relay.run(stop)
        finally:
            if http is not None:
                await http.stop()
            if store is not None:
                await store.close()

    _run(go, settings, serving=True)
