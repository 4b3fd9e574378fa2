"""The one builder of outgoing messages: every message Conveyor sends is made here.

A job travels as its encoded envelope plus, when it becomes due at another time than its
envelope's ``created_at`` (a delayed job, a retry or deferral copy, a replay), one transport
header with that time (``DUE_AT``: the start-delay metric reads it, else ``created_at``; the
envelope does not know a delay or a retry's). A new job published without delay carries no
header at all (``due_at=None``): it became due when ``publish`` was called, its ``created_at``,
and the worker's broker client then decodes no header table for it (pamqp, in Python, per
delivery on RabbitMQ). Messages from older versions, which always carry it, are read as
before. The
job type and the attempt are in the envelope, where the worker reads them; earlier versions
also sent them as headers (``JOB_TYPE``, ``ATTEMPT``), which nothing read, and the broker client
decoded in Python for every delivery (pamqp, per delivery; on Pulsar two more properties per
send). Messages that still carry them are read as before: extra headers change nothing.
Dead letters keep ``JOB_TYPE``: the DLQ tooling names the job type of a record it cannot read.

Four senders use this: the producer (new jobs), settlement (retry and
deferral copies, dead letters) and ``dlq replay`` (a dead job republished). Headers that must
survive a hop, such as the W3C trace context, come in as ``carried``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from conveyor.common import headers as h
from conveyor.common.transport.base import MessageKind, OutgoingMessage
from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import Envelope

__all__ = ["dead_letter_message", "job_message"]

_NONE: Mapping[str, str] = {}


def job_message(
    envelope: Envelope,
    body: bytes,
    *,
    due_at: datetime | float | None,
    delay: float = 0.0,
    carried: Mapping[str, str] = _NONE,
    extra: Mapping[str, str] = _NONE,
    kind: MessageKind = "job",
) -> OutgoingMessage:
    """A job (new, a retry or deferral copy, a replay): ``body`` is ``envelope`` encoded.

    ``due_at``: a date-time, or Unix seconds; ``None``: due at ``envelope.created_at`` (no ``DUE_AT`` header).
    ``kind="retry"`` for every copy a worker sends back (deferrals too: a worker may send copies,
    never new jobs); ``extra`` headers come last (a publish middleware's, a replay's marker).
    """
    if due_at is None:
        headers = {**carried, **extra}
    else:
        headers = {**carried, h.DUE_AT: h.format_due_at(due_at), **extra}
    return OutgoingMessage(body=body, message_id=envelope.job_id, headers=headers, delay=delay, kind=kind)


def dead_letter_message(
    record: DeadLetterRecord, body: bytes, *, carried: Mapping[str, str] = _NONE, run: Mapping[str, str] = _NONE
) -> OutgoingMessage:
    """A dead letter: ``body`` is ``record`` encoded; its reason rides in a header too, so the
    DLQ tooling can name it even for a record it cannot read. ``run``: the writing worker's
    code version and configuration hash headers."""
    return OutgoingMessage(
        body=body,
        message_id=record.dead_letter_id,
        headers={**carried, h.REASON: record.reason, h.JOB_TYPE: record.job_type or "", **run},
        kind="dead_letter",
    )
