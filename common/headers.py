"""Transport headers Conveyor sets, and which headers travel on to retry and dead-letter copies.

Headers named ``x-…`` belong to Conveyor (``x-conveyor-…``) or to the broker (RabbitMQ's
``x-first-death-…``): each copy sets its own. Every other header was added by the publisher
or a publish middleware — the W3C ``traceparent``/``tracestate``/``baggage`` of tracing, say —
and is carried over unchanged to retry, deferral and dead-letter copies and to replays, so a
job's whole life stays in one trace.

The content labels are the exception: ``content-type`` and ``content-encoding`` (on RabbitMQ the
message properties of those names, surfaced by the transport under these header names) describe
one body, so each copy, whose body Conveyor writes, leaves them out. Producers send JSON in
UTF-8 without a content encoding and leave both unset; a worker accepts that (or the same,
labelled) and dead-letters any other label unread (``check_content_labels``): a pickle or a
gzip stream that happens to parse must not run.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from conveyor.common.errors import UnsupportedContent

__all__ = [
    "ATTEMPT",
    "CONFIG_HASH",
    "PRODUCER_VERSION",
    "WORKER_VERSION",
    "CONTENT_ENCODING",
    "CONTENT_TYPE",
    "DUE_AT",
    "JOB_TYPE",
    "REASON",
    "REPLAYED_FROM",
    "carried_over",
    "check_content_labels",
    "due_timestamp",
    "format_due_at",
]

JOB_TYPE = "x-conveyor-job-type"  # on dead letters; on jobs only from versions before 2026-12
ATTEMPT = "x-conveyor-attempt"  # sent on jobs by versions before 2026-12; never read (the envelope's counts)
# When the message becomes due (epoch seconds): publish time plus its delay. The worker's
# "time from publish to start" metric is measured from it.
DUE_AT = "x-conveyor-due-at"
REPLAYED_FROM = "x-conveyor-replayed-from"  # on a replayed job: the dead letter it came from
REASON = "x-conveyor-reason"  # on a dead letter: the reason code of the record it carries
# On a dead letter: the code version and configuration hash of the worker that wrote it. Headers,
# not record fields: the published record schema forbids unknown fields, so older dlq tools
# would refuse records carrying new ones.
WORKER_VERSION = "x-conveyor-worker-version"
CONFIG_HASH = "x-conveyor-config-hash"
# In an envelope's own ``headers``: the producer's code version (an envelope header, not a new
# envelope field, for the same reason: workers of older versions must still read the message).
PRODUCER_VERSION = "conveyor.producer-version"
CONTENT_TYPE = "content-type"
CONTENT_ENCODING = "content-encoding"
_CONTENT_LABELS = frozenset({CONTENT_TYPE, CONTENT_ENCODING})
_LABEL_LENGTHS = frozenset(len(label) for label in _CONTENT_LABELS)
_JSON = "application/json"
# "utf-8" is not a content coding, but AMQP clients (kombu among them) put the charset there:
# the bytes are the same as with none.
_UTF8 = frozenset({"utf-8", "utf8"})
_NO_ENCODING = _UTF8 | {"", "identity"}


def carried_over(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers a copy of this message keeps: everything not reserved (``x-…``) and not a
    content label (the copy's body is Conveyor's own)."""
    return {k: v for k, v in headers.items() if not k.lower().startswith("x-") and k.lower() not in _CONTENT_LABELS}


def check_content_labels(headers: Mapping[str, str]) -> None:
    """Refuse a body labelled as anything but JSON without a content encoding.

    Unlabelled is JSON (what every Conveyor producer sends). ``application/json`` may carry a
    ``charset=utf-8`` parameter, no other. Raises ``UnsupportedContent`` (reason
    ``unsupported_content_type`` or ``unsupported_content_encoding``); the label is not echoed.
    """
    for name, value in headers.items():
        if len(name) not in _LABEL_LENGTHS or not value:  # most headers end here, cheaply
            continue
        name = name.lower()  # header names are case-insensitive (a Pulsar property is not, to others)
        if name == CONTENT_TYPE and not _is_json(value):
            raise UnsupportedContent("the message is labelled with a content type other than application/json")
        if name == CONTENT_ENCODING and value.strip().lower() not in _NO_ENCODING:
            raise UnsupportedContent(
                "the message is labelled with a content encoding (only identity is accepted)",
                reason="unsupported_content_encoding",
            )


def _is_json(content_type: str) -> bool:
    if content_type == _JSON:  # the label every Conveyor publisher writes: both deliveries of a retried job
        return True
    media_type, _, parameters = content_type.partition(";")
    if media_type.strip().lower() != _JSON:
        return False
    for parameter in parameters.split(";"):
        name, _, value = (part.strip().lower() for part in parameter.partition("="))
        if name and (name != "charset" or value.strip('"') not in _UTF8):
            return False
    return True


def format_due_at(moment: datetime | float) -> str:
    """``moment``: a date-time, or Unix seconds (what the system clock's ``time.time()`` gives)."""
    seconds = moment if isinstance(moment, float) else moment.timestamp()
    return f"{seconds:.3f}"


# What a datetime can hold (years 1-9999, UTC), as Unix seconds.
_EARLIEST = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC).timestamp()


def due_timestamp(headers: Mapping[str, str]) -> float | None:
    """When the message became due (Unix seconds), from ``DUE_AT``; None if absent or not a time.

    Seconds, not a ``datetime``: read for every job (the start-delay metric), where building
    and subtracting datetimes cost more than the rest of that metric.
    """
    raw = headers.get(DUE_AT)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if _EARLIEST <= value <= _LATEST else None  # NaN fails both comparisons
