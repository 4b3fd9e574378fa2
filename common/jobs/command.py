"""What flows through the publish middleware chain, and what a publish returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from conveyor.common.errors import ConfigurationError
from conveyor.schemas.envelope import Envelope

__all__ = ["PublishCommand", "PublishReceipt"]


@dataclass
class PublishCommand:
    queue: str
    envelope: Envelope
    delay: float = 0.0
    # Transport-level headers (not part of the envelope); middleware may add to them.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishReceipt:
    job_id: str
    queue: str
    confirmed_at: datetime
    tries: int  # > 1 when a publish outcome was unknown and was retried with the same id

    # A producer with a job-state store returns a ``common.job_state.handle.JobHandle`` (this,
    # plus the two methods working); without one they say what is missing.
    async def status(self) -> Any:
        """The job's ``JobRecord`` (needs ``Producer(job_state=...)``)."""
        raise ConfigurationError(_NO_STORE)

    async def result(self, timeout: float | None = None) -> Any:
        """The job's result once it succeeded (needs ``Producer(job_state=...)``)."""
        raise ConfigurationError(_NO_STORE)


_NO_STORE = (
    "job status and results need a job-state store: Producer(..., job_state=store) "
    "(CONVEYOR_JOB_STATE_URL for the CLI)"
)
