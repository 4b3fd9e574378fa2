"""The job envelope: everything a worker needs to run, retry and account for one job.

The envelope is frozen and versioned by ``envelope_version``; the job's own payload is
versioned separately by ``job_type`` + ``schema_version`` (see ``schemas.registry``).
Unknown fields are rejected so a typo or a smuggled field never passes silently.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "ENVELOPE_VERSION",
    "AttemptRecord",
    "Envelope",
    "InlinePayload",
    "MAX_HISTORY",
    "Payload",
    "PayloadReference",
    "new_job_id",
]

ENVELOPE_VERSION = 1
MAX_HISTORY = 50  # bounded so a job that bounced many times cannot outgrow the size limit

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@/-]{1,128}$")]
JobType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,127}$")]
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
HeaderValue = Annotated[str, StringConstraints(max_length=1024)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# Strict: "1" is not an attempt number; a producer sending strings for counters is broken.
Count = Annotated[int, Field(strict=True, ge=1, le=10_000)]


def new_job_id() -> str:
    """A random, URL-safe job id; uuid4 so ids from many producers never collide.

    The same string as ``str(uuid.uuid4())``, built without the ``UUID`` object, whose
    constructor costs about as much as validating the whole envelope.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class InlinePayload(_Frozen):
    """A small payload carried inside the message."""

    kind: Literal["inline"] = "inline"
    data: dict[str, Any]


class PayloadReference(_Frozen):
    """A claim check: where a large payload lives in an object store, and how to verify it.

    Structured on purpose, never a free-form URL, so a consumer can check the store, bucket
    and key against its allow-list before it makes any request.
    """

    kind: Literal["ref"] = "ref"
    store: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    bucket: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    sha256: Sha256Hex
    size: Annotated[int, Field(strict=True, ge=0, le=5 * 1024**3)]
    content_type: Literal["application/json"] = "application/json"


Payload = Annotated[InlinePayload | PayloadReference, Field(discriminator="kind")]


class AttemptRecord(_Frozen):
    """One finished attempt, kept in the envelope so retries and dead letters carry it."""

    attempt: Count
    worker_id: Annotated[str, StringConstraints(max_length=128)]
    started_at: AwareDatetime
    finished_at: AwareDatetime
    outcome: Literal["retried", "failed", "timeout", "deferred", "rejected"]
    error_type: Annotated[str, StringConstraints(max_length=200)] | None = None
    error_message: Annotated[str, StringConstraints(max_length=1000)] | None = None


class Envelope(_Frozen):
    """The typed, versioned job message."""

    envelope_version: Literal[1] = ENVELOPE_VERSION
    job_id: Identifier
    idempotency_key: Identifier
    job_type: JobType
    schema_version: Count
    correlation_id: Identifier
    causation_id: Identifier | None = None
    attempt: Count = 1
    created_at: AwareDatetime
    deadline: AwareDatetime | None = None
    headers: Annotated[dict[HeaderName, HeaderValue], Field(max_length=64)] = Field(
        default_factory=dict
    )
    payload: Payload
    history: Annotated[tuple[AttemptRecord, ...], Field(max_length=MAX_HISTORY)] = ()

    def next_attempt(self, record: AttemptRecord) -> Envelope:
        """The copy to publish for a retry: attempt+1 and this attempt in the history."""
        history = (*self.history, record)[-MAX_HISTORY:]
        return self.model_copy(update={"attempt": self.attempt + 1, "history": history})

    def with_history(self, record: AttemptRecord) -> Envelope:
        """The same attempt with one more history entry (a deferral spends no attempt)."""
        history = (*self.history, record)[-MAX_HISTORY:]
        return self.model_copy(update={"history": history})

    def expired(self, now: datetime) -> bool:
        return self.deadline is not None and now >= self.deadline
