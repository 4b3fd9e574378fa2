"""Conveyor: reliable, schema-versioned background jobs on RabbitMQ, Pulsar or in memory.

This module is the public API: import from ``conveyor`` (or a documented ``conveyor.*`` module).
The packages below it are the product's floors, lowest first (CI checks the order):
``conveyor.schemas`` (the wire contract) → ``conveyor.common`` (errors, jobs, codec, settings,
transports, stores) → ``conveyor.producer`` → ``conveyor.consumer`` (the engine, then its
middleware, operations and CLI).
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
        QueueNotFound,
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
    from conveyor.common.settings import Settings
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
    "QueueNotFound",
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


# Every name is imported on first use, from the module that defines it: ``from conveyor import
# JobRegistry`` in a worker's module does not load the producer, the job-state and idempotency
# stores, the SyncProducer's thread machinery or tenacity (issue 18, worker RSS).
_EXPORTS = {
    "AccessRefused": "conveyor.common.errors",
    "AlreadySettled": "conveyor.common.errors",
    "CircuitOpen": "conveyor.common.errors",
    "ConfigurationError": "conveyor.common.errors",
    "ConveyorError": "conveyor.common.errors",
    "DeadLetterRecord": "conveyor.schemas.dead_letter",
    "Envelope": "conveyor.schemas.envelope",
    "IdempotencyConflict": "conveyor.common.errors",
    "IdempotencyMiddleware": "conveyor.consumer.middleware.idempotency",
    "IdempotencyStoreUnavailable": "conveyor.common.errors",
    "InvalidPayload": "conveyor.common.errors",
    "JobCancelled": "conveyor.common.errors",
    "JobContext": "conveyor.common.jobs",
    "JobFailure": "conveyor.common.errors",
    "JobHandle": "conveyor.common.job_state.handle",
    "JobNotSucceeded": "conveyor.common.errors",
    "JobRecord": "conveyor.common.job_state",
    "JobRegistry": "conveyor.common.jobs",
    "JobSpec": "conveyor.common.jobs",
    "JobState": "conveyor.common.job_state",
    "JobStateStore": "conveyor.common.job_state",
    "JobStateStoreUnavailable": "conveyor.common.errors",
    "JobTimeout": "conveyor.common.errors",
    "MalformedMessage": "conveyor.common.errors",
    "MemoryBroker": "conveyor.common.transport.memory",
    "MemoryJobStateStore": "conveyor.common.job_state",
    "MemoryTransport": "conveyor.common.transport.memory",
    "MessageTooLarge": "conveyor.common.errors",
    "Middleware": "conveyor.common.middleware",
    "PayloadIntegrityError": "conveyor.common.errors",
    "PayloadMissing": "conveyor.common.errors",
    "PayloadReference": "conveyor.schemas.envelope",
    "PayloadReferenceInvalid": "conveyor.common.errors",
    "PayloadStore": "conveyor.common.payload_store",
    "PayloadStoreUnavailable": "conveyor.common.errors",
    "PermanentError": "conveyor.common.errors",
    "Producer": "conveyor.producer.producer",
    "PublishCommand": "conveyor.common.jobs",
    "PublishNacked": "conveyor.common.errors",
    "PublishNotConfirmed": "conveyor.common.errors",
    "PublishOutcomeUnknown": "conveyor.common.errors",
    "PublishReceipt": "conveyor.common.jobs",
    "QueueNotFound": "conveyor.common.errors",
    "RejectedMessage": "conveyor.common.errors",
    "RetryPolicy": "conveyor.common.backoff",
    "RetryableError": "conveyor.common.errors",
    "Settings": "conveyor.common.settings",
    "SyncProducer": "conveyor.producer.sync_producer",
    "TlsConfig": "conveyor.common.tls",
    "TlsError": "conveyor.common.errors",
    "Transport": "conveyor.common.transport.base",
    "TransportError": "conveyor.common.errors",
    "UnknownJob": "conveyor.common.errors",
    "UnknownJobType": "conveyor.common.errors",
    "UnknownSchemaVersion": "conveyor.common.errors",
    "Worker": "conveyor.consumer.worker",
    "WorkerConfig": "conveyor.consumer.worker",
    "job_state_store_from_url": "conveyor.common.job_state",
    "job_transaction": "conveyor.consumer.middleware.idempotency",
    "store_from_url": "conveyor.common.payload_store",
    "transport_from_url": "conveyor.common.transport.factory",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
