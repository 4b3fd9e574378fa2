"""The keyword options of a job, as types: what ``Producer.build_envelope`` and
``Producer.publish`` take, for the APIs that pass them on (``SyncProducer.publish``,
``Outbox.row``/``add``) without copying the list. mypy checks every forward against the
producer's own signature, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TypedDict

__all__ = ["EnvelopeOptions", "OutboxOptions", "PublishOptions"]


class EnvelopeOptions(TypedDict, total=False):
    """``Producer.build_envelope``'s options (see there for what each means)."""

    idempotency_key: str | None
    headers: Mapping[str, str] | None
    correlation_id: str | None
    causation_id: str | None
    deadline: datetime | timedelta | None
    version: int | None
    job_id: str | None


class PublishOptions(EnvelopeOptions, total=False):
    """``Producer.publish``'s options: the envelope's, and where and when it goes."""

    delay: float
    queue: str | None


class OutboxOptions(EnvelopeOptions, total=False):
    """``Outbox.row``'s options (and so ``add``'s): the envelope's, where and when the relay
    publishes it, and the key whose rows go out in order."""

    queue: str | None
    delay: float
    ordering_key: str | None
