"""The public surface: the façade's exact export list, and ``__all__`` in every module."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import conveyor

PACKAGES = ["conveyor.common", "conveyor.schemas", "conveyor.producer", "conveyor.consumer"]

FACADE = {
    "AccessRefused", "AlreadySettled", "CircuitOpen", "ConfigurationError", "ConveyorError",
    "DeadLetterRecord", "Envelope", "IdempotencyConflict", "IdempotencyMiddleware",
    "IdempotencyStoreUnavailable", "InvalidPayload", "JobContext", "JobFailure", "JobRegistry",
    "JobSpec", "JobTimeout", "MalformedMessage", "MemoryBroker", "MemoryTransport",
    "MessageTooLarge", "Middleware", "PayloadIntegrityError", "PayloadMissing", "PayloadReference",
    "PayloadReferenceInvalid", "PayloadStore", "PayloadStoreUnavailable", "PermanentError",
    "Producer", "PublishCommand", "PublishNotConfirmed", "PublishOutcomeUnknown", "PublishReceipt",
    "RejectedMessage", "RetryPolicy", "RetryableError", "Settings", "SyncProducer", "TlsConfig", "TlsError",
    "Transport", "TransportError", "UnknownJobType", "UnknownSchemaVersion", "Worker",
    "WorkerConfig", "job_transaction", "store_from_url", "transport_from_url",
    # issue 14: the job lifecycle
    "JobCancelled", "JobHandle", "JobNotSucceeded", "JobRecord", "JobState", "JobStateStore",
    "JobStateStoreUnavailable", "MemoryJobStateStore", "UnknownJob", "job_state_store_from_url",
    # a nack is backpressure, retried (the producer, the outbox relay)
    "PublishNacked",
    # operators' commands on a queue the broker lacks create nothing
    "QueueNotFound",
}  # fmt: skip


def test_facade_exports_exactly_the_public_api() -> None:
    assert set(conveyor.__all__) == FACADE
    assert len(conveyor.__all__) == len(FACADE), "a name is exported twice"
    for name in FACADE:
        assert getattr(conveyor, name).__module__.startswith("conveyor."), name


def test_every_error_in_the_facade_is_in_the_one_tree() -> None:
    errors = [getattr(conveyor, n) for n in FACADE if isinstance(getattr(conveyor, n), type)
              and issubclass(getattr(conveyor, n), BaseException)]
    assert len(errors) >= 20
    assert all(issubclass(e, conveyor.ConveyorError) for e in errors)


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_module_declares_its_public_surface(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if name.endswith(("__main__", "cli")) or name in PACKAGES and exported is None:
        return
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing objects: {missing}"
