"""``conveyor status``: what an operator asks first — how deep, how fast, what failed, who is up.

Per queue: ready / delayed / dead-letter depth and attached consumers (``Transport.stats``,
as far as the transport can tell), the oldest message's age where the transport knows it,
the rate the ready depth changes at (two samples ``interval`` seconds apart: positive means
the backlog grows), and the dead letters grouped by reason (browsed, then given back).
Per worker URL: its breakers, in-flight jobs, consumers and throughput, scraped from
``/metrics`` twice, ``interval`` apart. Read-only: it declares nothing.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rich.markup import escape
from rich.table import Table

from conveyor.common.errors import ConveyorError
from conveyor.common.transport.base import QueueStats, Transport
from conveyor.consumer.breaker import BreakerState
from conveyor.consumer.ops.dead_letters import DeadLetters

__all__ = ["QueueStatus", "StatusReport", "WorkerStatus", "collect_status", "render_tables", "scrape_worker"]


@dataclass
class QueueStatus:
    queue: str
    ready: int | None = None
    delayed: int | None = None
    dead_letters: int | None = None
    consumers: int | None = None
    oldest_age_seconds: float | None = None
    ready_rate_per_second: float | None = None
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    dead_letters_scanned: int = 0
    error: str | None = None
    # The error's reason code (``queue_not_found``, ``transport_error``…) for scripts.
    reason: str | None = None


@dataclass
class WorkerStatus:
    url: str
    up: bool = False
    breakers: dict[str, str] = field(default_factory=dict)
    in_flight: float = 0.0
    consumers_attached: float = 0.0
    jobs_per_second: float | None = None
    dead_letters_per_second: float | None = None
    # Counter totals (jobs published, succeeded, failed, retried, dead-lettered) at the sample,
    # for callers that keep their own history of samples (the console's rate chart).
    totals: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class StatusReport:
    interval: float
    queues: list[QueueStatus]
    workers: list[WorkerStatus]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def collect_status(
    transport: Transport,
    queues: list[str],
    *,
    interval: float = 2.0,
    workers: Sequence[str] = (),
    dlq_scan_limit: int = 1000,
) -> StatusReport:
    """Two rounds of samples ``interval`` apart (one when ``interval`` is 0), then the DLQs
    (browsed to group them by reason unless ``dlq_scan_limit`` is 0: depths only)."""
    first = await _sample_queues(transport, queues)
    first_scrapes = await _scrape_all(workers)
    if interval > 0:
        await asyncio.sleep(interval)
        second = await _sample_queues(transport, queues)
        second_scrapes = await _scrape_all(workers)
    else:
        second, second_scrapes = first, first_scrapes
    rows = [_queue_row(q, first[q], second[q], interval) for q in queues]
    for row in rows:
        if row.error is None and row.dead_letters and dlq_scan_limit > 0:
            await _group_dead_letters(transport, row, dlq_scan_limit)
    scrapes = zip(workers, first_scrapes, second_scrapes, strict=True)
    status = [_worker_row(url, a, b, interval) for url, a, b in scrapes]
    return StatusReport(interval=interval, queues=rows, workers=status)


async def _sample_queues(transport: Transport, queues: list[str]) -> dict[str, QueueStats | ConveyorError]:
    out: dict[str, QueueStats | ConveyorError] = {}
    for queue in queues:
        try:
            out[queue] = await transport.stats(queue)
        except ConveyorError as exc:
            out[queue] = exc
    return out


def _queue_row(queue: str, first: QueueStats | ConveyorError, second: QueueStats | ConveyorError,
               interval: float) -> QueueStatus:
    if isinstance(second, ConveyorError):
        error = f"{type(second).__name__}: {second}"
        return QueueStatus(queue=queue, error=error, reason=second.reason)
    row = QueueStatus(
        queue=queue,
        ready=second.ready,
        delayed=second.delayed,
        dead_letters=second.dead_letters,
        consumers=second.consumers,
        oldest_age_seconds=second.oldest_age,
    )
    if interval > 0 and not isinstance(first, ConveyorError):
        row.ready_rate_per_second = round((second.ready - first.ready) / interval, 3)
    return row


async def _group_dead_letters(transport: Transport, row: QueueStatus, limit: int) -> None:
    try:
        records = await DeadLetters(transport, row.queue).list(limit=limit)
    except ConveyorError as exc:
        row.error, row.reason = f"cannot browse the DLQ: {type(exc).__name__}: {exc}", exc.reason
        return
    row.dead_letters_scanned = len(records)
    row.dead_letters_by_reason = dict(collections.Counter(r.reason for r in records).most_common())


# -- workers -------------------------------------------------------------------------------

_Scrape = dict[str, list[tuple[dict[str, str], float]]] | str
_BREAKER_NAMES = {state.value: state.name.lower() for state in BreakerState}
_COUNTED = ("published", "succeeded", "failed", "retried", "dead_lettered")


async def _scrape_all(urls: Sequence[str]) -> list[_Scrape]:
    if not urls:
        return []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        return list(await asyncio.gather(*(scrape_worker(session, url) for url in urls)))


async def scrape_worker(session: aiohttp.ClientSession, url: str) -> _Scrape:
    """``{sample name: [(labels, value)]}`` of a worker's ``/metrics``, or an error text."""
    target = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
    try:
        async with session.get(target) as response:
            if response.status != 200:
                return f"HTTP {response.status} from {target}"
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    samples: dict[str, list[tuple[dict[str, str], float]]] = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def _total(scrape: _Scrape, name: str) -> float:
    return sum(v for _, v in scrape.get(name, ())) if not isinstance(scrape, str) else 0.0


def _worker_row(url: str, first: _Scrape, second: _Scrape, interval: float) -> WorkerStatus:
    if isinstance(second, str):
        return WorkerStatus(url=url, error=second)
    row = WorkerStatus(
        url=url,
        up=True,
        in_flight=_total(second, "conveyor_jobs_in_flight"),
        consumers_attached=_total(second, "conveyor_consumers_attached"),
    )
    row.totals = {name: _total(second, f"conveyor_jobs_{name}_total") for name in _COUNTED}
    for labels, value in second.get("conveyor_breaker_state", ()):
        row.breakers[labels.get("breaker", "?")] = _BREAKER_NAMES.get(int(value), str(value))
    if interval > 0 and not isinstance(first, str):
        done = ("conveyor_jobs_succeeded_total", "conveyor_jobs_dead_lettered_total")
        row.jobs_per_second = round(sum(_total(second, n) - _total(first, n) for n in done) / interval, 3)
        row.dead_letters_per_second = round(
            (_total(second, done[1]) - _total(first, done[1])) / interval, 3
        )
    return row


# -- rendering -------------------------------------------------------------------------------

def render_tables(report: StatusReport, broker: str) -> list[Table]:
    """The queue table, and the worker table when workers were scraped (``broker``: masked)."""
    return [_queue_table(report, broker), *([_worker_table(report)] if report.workers else [])]


def _number(value: float | None, suffix: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:g}{suffix}" if isinstance(value, float) else f"{value}{suffix}"


def _queue_table(report: StatusReport, broker: str) -> Table:
    table = Table(title=f"Queues on {broker}")
    for column in ("queue", "ready", "rate/s", "delayed", "oldest", "consumers", "dead letters", "by reason"):
        table.add_column(column, justify="left" if column in ("queue", "by reason") else "right")
    for q in report.queues:
        if q.error:
            table.add_row(escape(q.queue), *["—"] * 6, f"[red]{escape(q.error)}[/]")
            continue
        reasons = ", ".join(f"{reason} {n}" for reason, n in q.dead_letters_by_reason.items())
        if q.dead_letters and q.dead_letters_scanned < q.dead_letters:
            reasons += f" (first {q.dead_letters_scanned})"
        rate = q.ready_rate_per_second
        table.add_row(escape(q.queue), _number(q.ready), "—" if rate is None else f"{rate:+g}", _number(q.delayed),
                      _number(q.oldest_age_seconds, "s"), _number(q.consumers), _number(q.dead_letters),
                      escape(reasons))
    return table


def _worker_table(report: StatusReport) -> Table:
    table = Table(title="Workers")
    for column in ("worker", "up", "in flight", "consumers", "jobs/s", "breakers"):
        table.add_column(column)
    for w in report.workers:
        breakers = ", ".join(f"{name} {state}" for name, state in sorted(w.breakers.items())) or "—"
        up = "yes" if w.up else f"[red]no: {escape(w.error or '')}[/]"  # an error's text is never markup
        table.add_row(escape(w.url), up, _number(w.in_flight if w.up else None),
                      _number(w.consumers_attached if w.up else None), _number(w.jobs_per_second), escape(breakers))
    return table
