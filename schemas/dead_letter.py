"""The dead-letter record: what an operator needs to understand and replay a failed job."""

from __future__ import annotations

import base64
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from conveyor.schemas.envelope import AttemptRecord, Timestamp

__all__ = ["DeadLetterRecord", "REASONS"]

# Reason codes are a closed set so they are safe as metric labels and CLI filters.
REASONS = (
    "exhausted",  # retries ran out (attempts or total age)
    "permanent",  # the handler raised PermanentError
    "expired",  # the job's deadline passed
    "malformed",  # bytes that are not I-JSON or not a valid envelope
    "unsupported_content_type",  # labelled as something other than application/json
    "unsupported_content_encoding",  # labelled with a content encoding (gzip, …)
    "oversize",  # over the size limit, checked before parsing
    "unknown_job_type",
    "unknown_version",
    "invalid_payload",  # the payload does not match its schema
    "delivery_limit",  # the broker's crash-loop backstop dead-lettered it
    "rejected",
    "settlement_failed",  # its retry/deferral copy could not be written (or was refused again and again)
    "payload_reference_invalid",  # a claim check outside the allowed store/bucket/prefix
    "payload_missing",  # the claim check's object is gone
    "payload_integrity",  # the object's size or sha256 does not match its claim check
    "idempotency_conflict",  # the idempotency key already succeeded with another payload
    "crash_loop",  # it was running each time a worker process died
)


class DeadLetterRecord(BaseModel):
    """A dead letter keeps the original bytes and headers, the error and every attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record_version: int = 1
    dead_letter_id: Annotated[str, StringConstraints(max_length=128)]
    queue: Annotated[str, StringConstraints(max_length=255)]
    reason: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,40}$")]
    error_type: str | None = None
    error_message: Annotated[str, StringConstraints(max_length=2000)] | None = None
    traceback: Annotated[str, StringConstraints(max_length=20_000)] | None = None
    dead_lettered_at: Timestamp
    worker_id: Annotated[str, StringConstraints(max_length=128)]
    # Only known when the body decoded; a poison message has none of these.
    job_id: str | None = None
    job_type: str | None = None
    attempt: int | None = None
    history: tuple[AttemptRecord, ...] = Field(default=())
    original_headers: dict[str, str] = Field(default_factory=dict)
    original_body_b64: str

    @property
    def original_body(self) -> bytes:
        return base64.b64decode(self.original_body_b64)

    @staticmethod
    def encode_body(body: bytes) -> str:
        return base64.b64encode(body).decode("ascii")
