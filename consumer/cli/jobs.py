"""``conveyor jobs show | list | cancel``: what a job is doing, did, and stopping it.

They read the job-state store (``--job-state-url`` / CONVEYOR_JOB_STATE_URL); ``cancel`` also
broadcasts on the broker's control channel when a broker is given, so the worker running the
job stops it at once (without one, workers pick the cancel up from the store within their poll).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.markup import escape
from rich.table import Table

from conveyor.common.errors import JobAlreadyEnded
from conveyor.common.job_state.base import JobStateStore
from conveyor.common.job_state.states import JobRecord, JobState
from conveyor.common.settings import Settings
from conveyor.consumer.cli.support import (
    broker_option,
    console,
    job_state_option,
    job_state_store_for,
    run,
    settings_from,
    transport_for,
)

__all__ = ["jobs"]

T = TypeVar("T")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@click.group()
def jobs() -> None:
    """Job states, attempts and results from the job-state store; cancel a job."""


def _settings(job_state_url: str | None) -> Settings:
    settings = settings_from(**({"job_state_url": job_state_url} if job_state_url else {}))
    if job_state_store_for(settings) is None:
        raise click.UsageError(
            "no job-state store: pass --job-state-url URL or set CONVEYOR_JOB_STATE_URL "
            "(or CONVEYOR_JOB_STATE_URL_FILE)", ctx=click.get_current_context(silent=True),
        )
    _require_sqlite_file(settings)
    return settings


def _require_sqlite_file(settings: Settings) -> None:
    """These commands read a store that workers and producers write: a SQLite file that is not
    there is a mistyped path. Opening it created an empty store, and its directories, and then
    answered ``unknown_job`` for a job that is in the real one."""
    from conveyor.common.sql import parse_store_url

    assert settings.job_state_url is not None  # _settings checked
    location = parse_store_url(settings.job_state_url.get_secret_value(), what="job-state store")
    if location.kind == "sqlite" and location.target != ":memory:" and not Path(location.target).exists():
        raise click.ClickException(
            f"no job-state store at {location.target} (reason: store_not_found): workers and producers "
            "create it; a mistyped path?"
        )


def _with_store(settings: Settings, action: Callable[[JobStateStore], Awaitable[T]]) -> T:
    async def go() -> T:
        async with job_state_store_for(settings) as store:
            return await action(store)

    return run(go(), settings)


def _since(value: str | None) -> datetime | None:
    """An ISO 8601 time (UTC if it names no zone) or a duration back from now: 90s, 15m, 2h, 7d."""
    if value is None:
        return None
    match = _DURATION.match(value.strip())
    if match:
        try:
            return datetime.now(UTC) - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
        except OverflowError:  # past year 1 (or a float timedelta cannot hold): everything
            return datetime.min.replace(tzinfo=UTC)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a time (2026-01-31T12:00) nor a duration (15m, 2h, 7d)",
                                 param_hint="--since") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "—"


@jobs.command("show")
@click.argument("job_id")
@job_state_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object")
def jobs_show(job_id: str, job_state_url: str | None, as_json: bool) -> None:
    """One job: state, times, result, every attempt, and its dead letter if it has one."""
    record = _with_store(_settings(job_state_url), lambda store: store.get(job_id))
    if record is None:
        raise click.ClickException(f"UnknownJob (unknown_job): no job {job_id!r} in the job-state store")
    if as_json:
        click.echo(orjson.dumps(record.to_dict()).decode())
        return
    table = Table(title=f"job {escape(record.job_id)}", show_header=False)
    for name, value in _summary(record):
        table.add_row(name, escape(value))  # what jobs wrote is text, never rich markup (a "[/x]" was a traceback)
    console.print(table)
    if record.attempts:
        attempts = Table(title="attempts")
        for column in ("#", "worker", "started", "finished", "outcome", "error", "code version"):
            attempts.add_column(column)
        for a in record.attempts:
            attempts.add_row(*map(escape, (str(a.attempt), a.worker_id, _when(a.started_at), _when(a.finished_at),
                                           a.outcome or "running", (a.error or "")[:80], a.code_version or "—")))
        console.print(attempts)


def _summary(record: JobRecord) -> list[tuple[str, str]]:
    rows = [
        ("state", str(record.state)), ("type", record.job_type or "—"), ("queue", record.queue or "—"),
        ("attempt", str(record.attempt)), ("created", _when(record.created_at)), ("queued", _when(record.queued_at)),
        ("started", _when(record.started_at)), ("finished", _when(record.finished_at)),
        ("reason", record.reason or "—"), ("error", record.error or "—"),
        ("code version", record.code_version or "—"), ("config hash", record.config_hash or "—"),
        ("producer version", record.producer_version or "—"),
        ("idempotency key", record.idempotency_key or "—"),
    ]
    if record.scheduled_for:
        rows.append(("scheduled for", _when(record.scheduled_for)))
    if record.cancel_requested_at:
        rows.append(("cancel requested", _when(record.cancel_requested_at)))
    if record.result is not None:
        rows.append(("result", record.result[:500]))
    if record.result_ref is not None:
        rows.append(("result (stored)", record.result_ref))
    if record.dead_letter_id:
        queue = record.queue or "QUEUE"
        rows.append(("dead letter", f"{record.dead_letter_id}  (conveyor dlq show {record.dead_letter_id} "
                                    f"--queue {queue})"))
    return rows


@jobs.command("list")
@job_state_option
@click.option("--state", type=click.Choice([s.value for s in JobState]), default=None, help="Only jobs in this state")
@click.option("--type", "job_type", default=None, help="Only jobs of this type")
@click.option("--since", default=None, help="Created since: a time (2026-01-31T12:00) or a duration (15m, 2h, 7d)")
@click.option("--idempotency-key", "idempotency_key", default=None,
              help="Only jobs published with this idempotency key (every one of them, newest first)")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line")
def jobs_list(job_state_url: str | None, state: str | None, job_type: str | None, since: str | None,
              idempotency_key: str | None, limit: int, as_json: bool) -> None:
    """Jobs, newest first."""
    when = _since(since)
    settings = _settings(job_state_url)
    records = _with_store(settings, lambda store: store.list_jobs(
        state=JobState(state) if state else None, job_type=job_type, since=when, idempotency_key=idempotency_key,
        limit=limit,
    ))
    if as_json:
        for record in records:
            click.echo(orjson.dumps(record.to_dict()).decode())
        return
    table = Table(title=f"{len(records)} jobs")
    for column in ("job id", "type", "state", "attempt", "created", "finished", "reason"):
        table.add_column(column)
    for r in records:
        table.add_row(*map(escape, (r.job_id, r.job_type or "—", str(r.state), str(r.attempt), _when(r.created_at),
                                    _when(r.finished_at), r.reason or "—")))
    console.print(table)


@jobs.command("cancel")
@click.argument("job_id")
@job_state_option
@broker_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object")
def jobs_cancel(job_id: str, job_state_url: str | None, broker: str | None, as_json: bool) -> None:
    """Cancel a job: a waiting one never runs; a running one is stopped on its worker.

    Idempotent; a job that already succeeded or was dead-lettered is left as it ended, and
    the command fails (reason job_ended)."""
    from conveyor.consumer.ops.jobs import cancel_job

    settings = _settings(job_state_url)

    async def go(store: JobStateStore) -> Any:
        if broker is None:
            return await cancel_job(store, job_id)
        async with transport_for(broker, settings) as transport:
            return await cancel_job(store, job_id, control=transport)

    result, broadcast = _with_store(settings, go)
    if not result.changed and result.state in (JobState.SUCCEEDED, JobState.DEAD_LETTERED):
        # A cancel that cannot take effect: said on stdout with exit 0, a script took it for done.
        hint = " (conveyor jobs show names its dead letter)" if result.state is JobState.DEAD_LETTERED else ""
        raise click.ClickException(
            f"JobAlreadyEnded ({JobAlreadyEnded.reason}): job {job_id} already ended {result.state}; "
            f"nothing was cancelled{hint}"
        )
    if as_json:
        click.echo(orjson.dumps({
            "job_id": job_id, "previous": str(result.previous), "state": str(result.state),
            "changed": result.changed, "broadcast": broadcast,
        }).decode())
        return
    if not result.changed:
        click.echo(f"job {job_id} is {result.state}: nothing to cancel")
    elif result.running:
        how = "its worker was told" if broadcast else "its worker stops it within its poll (no --broker given)"
        click.echo(f"job {job_id} is running: cancel requested; {how}")
    else:
        click.echo(f"job {job_id} cancelled (was {result.previous}); it will not run")
