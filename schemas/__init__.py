"""The wire contract: envelope, payload reference, dead-letter record, schema registry.

Pure pydantic, no I/O. Everything a non-Python publisher needs to speak to Conveyor.
"""

from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import (
    AttemptRecord,
    Envelope,
    InlinePayload,
    PayloadReference,
    new_job_id,
)
from conveyor.schemas.registry import SchemaRegistry

__all__ = [
    "AttemptRecord",
    "DeadLetterRecord",
    "Envelope",
    "InlinePayload",
    "PayloadReference",
    "SchemaRegistry",
    "new_job_id",
]
