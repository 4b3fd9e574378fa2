"""Transport headers Conveyor sets, and which headers travel on to retry and dead-letter copies.

Headers named ``x-…`` belong to Conveyor (``x-conveyor-…``) or to the broker (RabbitMQ's
``x-first-death-…``): each copy sets its own. Every other header was added by the publisher
or a publish middleware — the W3C ``traceparent``/``tracestate``/``baggage`` of tracing, say —
and is carried over unchanged to retry, deferral and dead-letter copies and to replays, so a
job's whole life stays in one trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

__all__ = ["ATTEMPT", "DUE_AT", "JOB_TYPE", "carried_over", "due_at", "format_due_at"]

JOB_TYPE = "x-conveyor-job-type"
ATTEMPT = "x-conveyor-attempt"
# When the message becomes due (epoch seconds): publish time plus its delay. The worker's
# "time from publish to start" metric is measured from it.
DUE_AT = "x-conveyor-due-at"


def carried_over(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers a copy of this message keeps: everything not reserved (``x-…``)."""
    return {k: v for k, v in headers.items() if not k.lower().startswith("x-")}


def format_due_at(moment: datetime) -> str:
    return f"{moment.timestamp():.3f}"


def due_at(headers: Mapping[str, str]) -> datetime | None:
    raw = headers.get(DUE_AT)
    if raw is None:
        return None
    try:
        return datetime.fromtimestamp(float(raw), UTC)
    except (ValueError, OverflowError, OSError):
        return None
