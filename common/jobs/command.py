"""What flows through the publish middleware chain, and what a publish returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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
