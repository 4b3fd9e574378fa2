"""``conveyor dlq list | show | replay | purge``: the dead-letter queue, for operators."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from conveyor.common.codec import strict_json_loads
from conveyor.common.errors import ConveyorError
from conveyor.consumer.cli.support import (
    broker_option,
    console,
    finite,
    payload_store_for,
    payload_store_option,
    queue_option,
    require_broker,
    run,
    settings_from,
    transport_for,
)
from conveyor.consumer.ops.dead_letters import DeadLetterFilter, DeadLetters, require_dead_letter_queue

__all__ = ["dlq"]

T = TypeVar("T")


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


def _filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--reason", default=None, help="Only entries with this reason code")(fn)
    fn = click.option("--job-type", default=None, help="Only entries of this job type")(fn)
    return fn


def _run_on_dlq(broker: str | None, queue: str, action: Callable[[DeadLetters], Awaitable[T]]) -> T:
    settings = settings_from()
    url = require_broker(broker)

    async def go() -> T:
        transport = transport_for(url, settings)
        async with transport:
            await require_dead_letter_queue(transport, queue)
            return await action(DeadLetters(transport, queue, max_message_bytes=settings.max_message_bytes))

    return run(go(), settings)


@dlq.command("list")
@broker_option
@queue_option
@_filters
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--worker-version", default=None,
              help="Only entries written by workers of this code version (CONVEYOR_CODE_VERSION)")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line")
def dlq_list(broker: str | None, queue: str, reason: str | None, job_type: str | None, limit: int,
             worker_version: str | None, as_json: bool) -> None:
    """List dead letters (they stay in the DLQ)."""
    seen: dict[str, dict[str, str | None]] = {}

    async def listed(d: DeadLetters) -> list[Any]:
        found = await d.list(DeadLetterFilter(reason, job_type, worker_version=worker_version), limit=limit)
        seen.update(d.run_info)
        return found

    records = _run_on_dlq(broker, queue, listed)
    if as_json:
        for record in records:
            data = record.model_dump(mode="json", exclude={"traceback", "original_body_b64"})
            click.echo(orjson.dumps({**data, **seen.get(record.dead_letter_id, {})}).decode())
        return
    table = Table(title=f"DLQ of {queue}: {len(records)} shown")
    for column in ("id", "job id", "job type", "reason", "error", "attempts", "when"):
        table.add_column(column)
    for r in records:
        table.add_row(*map(escape, (  # what jobs wrote is text, never rich markup (a "[/x]" was a traceback)
            r.dead_letter_id, r.job_id or "—", r.job_type or "—", r.reason,
            f"{r.error_type or ''}: {(r.error_message or '')[:60]}", str(len(r.history)),
            r.dead_lettered_at.isoformat(timespec="seconds"))))
    console.print(table)


@dlq.command("show")
@click.argument("entry_id")
@broker_option
@queue_option
def dlq_show(entry_id: str, broker: str | None, queue: str) -> None:
    """Show one dead letter in full (by dead-letter id or job id)."""
    record = _run_on_dlq(broker, queue, lambda d: d.show(entry_id))
    if record is None:
        raise click.ClickException(f"no dead letter {entry_id!r} in {queue} (reason: not_found)")  # as the console says
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
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Replay at most N entries")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              callback=finite, help="At most N entries per second")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing")
def dlq_replay(broker: str | None, queue: str, reason: str | None, job_type: str | None, limit: int | None,
               rate: float | None, dry_run: bool) -> None:
    """Republish dead letters with a fresh attempt budget (same job id and history).

    Only the entries present when it starts: a replayed job that fails again is not replayed
    again in the same run, so it ends even while the bug is still live. Entries another reader
    holds at that moment (a dlq list, a console page) are left for the next run."""
    async def go(d: DeadLetters) -> Any:
        total = await d.depth()
        with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), console=console,
                      disable=dry_run or total < 20) as progress:
            task = progress.add_task("replay", total=min(total, limit or total))
            return await d.replay(DeadLetterFilter(reason, job_type), limit=limit, rate=rate, dry_run=dry_run,
                                  progress=lambda r: progress.update(task, completed=r.matched))

    report = _run_on_dlq(broker, queue, go)
    verb = "would replay" if dry_run else "replayed"
    count = report.matched if dry_run else report.replayed
    kept, again = report.skipped_unreplayable, report.skipped_replayed
    click.echo(f"{verb} {count} of {report.matched} matching entries"
               + (f"; {kept} unreplayable (never decoded) kept" if kept else "")
               + (f"; {again} more of jobs this run replayed kept" if again else ""))
    for reason_code, n in sorted(report.by_reason.items()):
        click.echo(f"  {reason_code}: {n}")


@dlq.command("purge")
@broker_option
@queue_option
@_filters
@click.option("--yes", is_flag=True, help="Really delete; without it nothing is removed")
@payload_store_option
def dlq_purge(broker: str | None, queue: str, reason: str | None, job_type: str | None, yes: bool,
              payload_store: str | None) -> None:
    """Delete matching dead letters for good, with their stored payloads."""
    if not yes:
        raise click.ClickException("purge deletes dead letters for good: add --yes (reason: not_confirmed)")
    settings = settings_from(**({"payload_store": payload_store} if payload_store else {}))
    url = require_broker(broker)

    async def go() -> tuple[int, int]:
        from conveyor.consumer.payloads import PayloadResolver

        store = payload_store_for(settings)
        transport = transport_for(url, settings)
        try:
            async with transport:
                await require_dead_letter_queue(transport, queue)
                letters = DeadLetters(transport, queue, payloads=PayloadResolver.for_store(store),
                                      max_message_bytes=settings.max_message_bytes)
                removed = await letters.purge(DeadLetterFilter(reason, job_type))
                return removed, letters.payloads_deleted
        finally:
            if store is not None:
                await store.close()

    removed, deleted = run(go(), settings)
    click.echo(f"purged {removed} entries; deleted {deleted} stored payloads")
