"""What processing decided for one delivery; settlement carries it out."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from schemas.envelope import Envelope

__all__ = ["Outcome", "OutcomeKind"]


class OutcomeKind(enum.Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # failed; retry after backoff if the budget allows, else dead-letter
    DEAD = "dead"  # dead-letter now with ``reason``
    DEFER = "defer"  # not for this worker yet (newer schema): later, no attempt spent
    RELEASE = "release"  # give back untouched (breaker open, shutting down)


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    envelope: Envelope | None = None  # None when the bytes never decoded
    reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timed_out: bool = False
    duration: float = 0.0

    @property
    def job_type(self) -> str | None:
        return self.envelope.job_type if self.envelope else None
