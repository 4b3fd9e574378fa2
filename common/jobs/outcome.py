"""What processing decided for one delivery; settlement carries it out."""

from __future__ import annotations

import enum
import traceback as traceback_module
from dataclasses import dataclass, field
from datetime import datetime

from conveyor.schemas.envelope import Envelope

__all__ = ["Outcome", "OutcomeKind", "SettleAction"]


class OutcomeKind(enum.Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # failed; retry after backoff if the budget allows, else dead-letter
    DEAD = "dead"  # dead-letter now with ``reason``
    DEFER = "defer"  # not for this worker yet (newer schema): later, no attempt spent
    RELEASE = "release"  # give back untouched (breaker open, shutting down)
    CANCELLED = "cancelled"  # an operator cancelled it: ack, never retry or dead-letter


class SettleAction(enum.StrEnum):
    """What settlement did with a delivery: the worker's counts and the metrics key on it.

    A ``str`` enum, so ``worker.counts["succeeded"]`` and log fields read as before."""

    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    DEFERRED = "deferred"
    RELEASED = "released"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made building
# one Outcome per job cost three times as much. Nothing mutates an Outcome once made.
@dataclass(slots=True)
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
    # The exception behind a failure. Formatting a traceback costs more than the rest of a
    # retry, and only dead letters keep one, so it is formatted on demand: ``traceback_text``.
    error: BaseException | None = field(default=None, repr=False, compare=False)
    # Set by settlement when it wrote a dead letter (its id and reason): the job's record links to it.
    dead_letter_id: str | None = None
    dead_letter_reason: str | None = None

    def traceback_text(self) -> str | None:
        """``traceback`` if set, else the formatted traceback of ``error`` (last 20,000 chars)."""
        if self.traceback is not None or self.error is None:
            return self.traceback
        return "".join(traceback_module.format_exception(self.error))[-20_000:]

    @property
    def job_type(self) -> str | None:
        return self.envelope.job_type if self.envelope else None
