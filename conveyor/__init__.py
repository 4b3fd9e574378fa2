"""Conveyor: reliable, schema-versioned background jobs on RabbitMQ, Pulsar or in memory.

This module is the public API: import from ``conveyor`` (or a documented ``conveyor.*`` module).
The packages below it are the product's floors, lowest first (CI checks the order):
``conveyor.schemas`` (the wire contract) → ``conveyor.common`` (errors, jobs, codec, settings,
transports, stores) → ``conveyor.producer`` → ``conveyor.consumer`` (the engine, then its
middleware, operations and CLI).
"""

from typing import TYPE_CHECKING

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import (
    AccessRefused,
    AlreadySettled,
    CircuitOpen,
    ConfigurationError,
    ConveyorError,
    IdempotencyConflict,
    IdempotencyStoreUnavailable,
    InvalidPayload,
    JobCancelled,
    JobFailure,
    JobNotSucceeded,
    JobStateStoreUnavailable,
    JobTimeout,
    MalformedMessage,
    MessageTooLarge,
    PayloadIntegrityError,
    PayloadMissing,
    PayloadReferenceInvalid,
    PayloadStoreUnavailable,
    PermanentError,
    PublishNacked,
    PublishNotConfirmed,
    PublishOutcomeUnknown,
    RejectedMessage,
    RetryableError,
    TlsError,
    TransportError,
    UnknownJob,
    UnknownJobType,
    UnknownSchemaVersion,
)
from conveyor.common.job_state import (
    JobRecord,
    JobState,
    JobStateStore,
    MemoryJobStateStore,
    job_state_store_from_url,
)
from conveyor.common.job_state.handle import JobHandle
from conveyor.common.jobs import JobContext, JobRegistry, JobSpec, PublishCommand, PublishReceipt
from conveyor.common.middleware import Middleware
from conveyor.common.payload_store import PayloadStore, store_from_url
from conveyor.common.tls import TlsConfig
from conveyor.common.transport.base import Transport
from conveyor.common.transport.factory import transport_from_url
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.middleware.idempotency import IdempotencyMiddleware, job_transaction
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from conveyor.producer.sync_producer import SyncProducer
from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import Envelope, PayloadReference

if TYPE_CHECKING:
    from conveyor.common.settings import Settings

__all__ = [
    "AccessRefused",
    "AlreadySettled",
    "CircuitOpen",
    "ConfigurationError",
    "ConveyorError",
    "DeadLetterRecord",
    "Envelope",
    "IdempotencyConflict",
    "IdempotencyMiddleware",
    "IdempotencyStoreUnavailable",
    "InvalidPayload",
    "JobCancelled",
    "JobContext",
    "JobFailure",
    "JobHandle",
    "JobNotSucceeded",
    "JobRecord",
    "JobRegistry",
    "JobSpec",
    "JobState",
    "JobStateStore",
    "JobStateStoreUnavailable",
    "JobTimeout",
    "MalformedMessage",
    "MemoryBroker",
    "MemoryJobStateStore",
    "MemoryTransport",
    "MessageTooLarge",
    "Middleware",
    "PayloadIntegrityError",
    "PayloadMissing",
    "PayloadReference",
    "PayloadReferenceInvalid",
    "PayloadStore",
    "PayloadStoreUnavailable",
    "PermanentError",
    "Producer",
    "PublishCommand",
    "PublishNacked",
    "PublishNotConfirmed",
    "PublishOutcomeUnknown",
    "PublishReceipt",
    "RejectedMessage",
    "RetryPolicy",
    "RetryableError",
    "Settings",
    "SyncProducer",
    "TlsConfig",
    "TlsError",
    "Transport",
    "TransportError",
    "UnknownJob",
    "UnknownJobType",
    "UnknownSchemaVersion",
    "Worker",
    "WorkerConfig",
    "job_state_store_from_url",
    "job_transaction",
    "store_from_url",
    "transport_from_url",
]


def __getattr__(name: str) -> object:
    # Settings loads pydantic-settings (~5 MiB resident): only on first use, so a worker or
    # producer built in code does not carry it (issue 18, worker RSS).
    if name == "Settings":
        from conveyor.common.settings import Settings

        return Settings
    raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
