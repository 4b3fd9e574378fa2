"""Per-message state that flows through the middleware chain to the handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from conveyor.common.errors import ConfigurationError
from conveyor.schemas.envelope import Envelope

if TYPE_CHECKING:
    from conveyor.common.jobs.registry import JobSpec

__all__ = ["Checkpoints", "JobContext", "envelope_log_fields"]


class Checkpoints(Protocol):
    """Saved progress of one job, provided by the idempotency middleware (it owns the store)."""

    @property
    def last_checkpoint(self) -> dict[str, Any] | None: ...

    async def checkpoint(self, state: dict[str, Any]) -> None: ...


@dataclass
class JobContext:
    envelope: Envelope
    spec: JobSpec
    payload: BaseModel
    worker_id: str
    queue: str
    # Middleware may stash per-message values here (timings, spans) without new fields.
    state: dict[str, Any] = field(default_factory=dict)
    # The delivery's transport headers (e.g. the W3C trace context a publish middleware added).
    headers: dict[str, str] = field(default_factory=dict)
    # Set by the idempotency middleware when the job has a processed-key store.
    checkpoints: Checkpoints | None = None
    # Set (from the loop thread) when an operator cancels this job while it runs. An async
    # handler is cancelled outright; a sync handler cannot be, so it should check this between
    # steps and return early: the job is recorded cancelled whatever it returns.
    cancelled: bool = False
    # The broker delivered this message before (to this process or another, which may have died
    # with it): the crash guard then looks for the journals of siblings that died meanwhile.
    redelivered: bool = False

    @property
    def last_checkpoint(self) -> dict[str, Any] | None:
        """What ``checkpoint`` saved in an earlier attempt of this job (needs an idempotency store)."""
        return None if self.checkpoints is None else self.checkpoints.last_checkpoint

    async def checkpoint(self, state: dict[str, Any]) -> None:
        """Save progress; a retry or a redelivery after a crash resumes from it."""
        if self.checkpoints is None:
            raise ConfigurationError(
                f"{self.job_type}: checkpoints need the idempotency middleware (and a job without idempotent=False)"
            )
        await self.checkpoints.checkpoint(state)

    @property
    def job_id(self) -> str:
        return self.envelope.job_id

    @property
    def attempt(self) -> int:
        return self.envelope.attempt

    @property
    def job_type(self) -> str:
        return self.envelope.job_type

    @property
    def correlation_id(self) -> str:
        return self.envelope.correlation_id

    def log_fields(self) -> dict[str, Any]:
        return envelope_log_fields(self.envelope)  # the envelope's, not four property calls per job


def envelope_log_fields(envelope: Envelope) -> dict[str, Any]:
    """The fields every log line about a job carries (``job_log_fields``), from its envelope:
    also for a job whose context was never built (its payload fetch failed)."""
    return {
        "job_id": envelope.job_id,
        "job_type": envelope.job_type,
        "attempt": envelope.attempt,
        "correlation_id": envelope.correlation_id,
    }
