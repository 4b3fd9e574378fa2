"""One exception hierarchy for Conveyor.

    ConveyorError
    ├── ConfigurationError          bad settings or job options, found at start-up
    ├── TransportError              a broker could not be reached or answered badly
    │   ├── AccessRefused           the broker user lacks a permission (declare, consume, get)
    │   ├── TlsError                the TLS handshake failed: certificate not trusted, wrong host name
    │   ├── PublishNotConfirmed     the broker nacked, returned (unroutable) or refused a publish
    │   ├── PublishOutcomeUnknown   no confirm in time: the message may or may not exist
    │   └── AlreadySettled          a delivery was acked/nacked twice
    ├── RejectedMessage             bad input; carries a ``reason`` code; goes to the DLQ
    │   ├── MessageTooLarge           reason ``oversize``
    │   ├── MalformedMessage          reason ``malformed`` (not I-JSON, or not a valid envelope)
    │   ├── UnsupportedContent        reason ``unsupported_content_type`` / ``unsupported_content_encoding``
    │   ├── UnknownJobType            reason ``unknown_job_type``
    │   ├── UnknownSchemaVersion      reason ``unknown_version``
    │   ├── InvalidPayload            reason ``invalid_payload``
    │   ├── PayloadReferenceInvalid   reason ``payload_reference_invalid`` (checked before any request)
    │   ├── PayloadMissing            reason ``payload_missing`` (the store has no such object)
    │   ├── PayloadIntegrityError     reason ``payload_integrity`` (size or sha256 mismatch)
    │   ├── IdempotencyConflict       reason ``idempotency_conflict`` (key reused, other payload)
    │   └── CrashLoop                 reason ``crash_loop`` (it was running each time a worker died)
    ├── JobFailure                  raised by handlers to steer the outcome
    │   ├── RetryableError            try again later (the default for other exceptions)
    │   └── PermanentError            do not retry; dead-letter now
    ├── JobTimeout                  the handler ran past its time limit (retryable)
    ├── PayloadStoreUnavailable     the payload store is unreachable or failed (retryable)
    ├── IdempotencyStoreUnavailable the processed-key database failed (retryable)
    ├── UnknownJob                  reason ``unknown_job``: no such job id in the job-state store
    ├── JobAlreadyEnded             reason ``job_ended``: a cancel of a job that succeeded or was dead-lettered
    ├── JobStateStoreUnavailable    the job-state database failed (writes are buffered and retried)
    ├── JobCancelled                an operator cancelled the job: acked, never retried or dead-lettered
    ├── JobNotSucceeded             ``handle.result()`` of a job that ended dead-lettered or cancelled
    └── CircuitOpen                 a breaker refused the call (no attempt spent)

Third-party exceptions are mapped at the transport boundary with ``raise … from``,
so callers only ever catch these types. Error texts never echo message field values:
they can hold secrets.
"""

from __future__ import annotations

__all__ = [
    "AccessRefused",
    "AlreadySettled",
    "IdempotencyConflict",
    "IdempotencyStoreUnavailable",
    "CircuitOpen",
    "ConfigurationError",
    "ConveyorError",
    "CrashLoop",
    "InvalidPayload",
    "JobAlreadyEnded",
    "JobCancelled",
    "JobNotSucceeded",
    "JobStateStoreUnavailable",
    "JobFailure",
    "JobTimeout",
    "MalformedMessage",
    "MessageTooLarge",
    "PayloadIntegrityError",
    "PayloadMissing",
    "PayloadReferenceInvalid",
    "PayloadStoreUnavailable",
    "PermanentError",
    "PublishNotConfirmed",
    "PublishOutcomeUnknown",
    "QueueNotFound",
    "RejectedMessage",
    "RetryableError",
    "TlsError",
    "TransportError",
    "UnknownJob",
    "UnknownJobType",
    "UnknownSchemaVersion",
    "UnsupportedContent",
]


class ConveyorError(Exception):
    """Base of every error Conveyor raises on purpose.

    Each carries a ``reason`` code, stable for scripts: the CLI prints it beside the message
    (``TransportError (broker_error): …``), the console in its page, its JSON and the
    ``X-Conveyor-Reason`` header."""

    reason = "error"


class ConfigurationError(ConveyorError):
    """Settings or job options are invalid; raised at start-up, never mid-run."""

    reason = "invalid_configuration"


class TransportError(ConveyorError):
    """The broker could not be reached, or it answered in a way we cannot use."""

    reason = "broker_error"


class QueueNotFound(TransportError):
    """The broker has no queue of this name (or not its dead-letter queue): a mistyped name, or a
    queue no worker or ``declare`` has created yet. Commands that only read never create one."""

    reason = "queue_not_found"


class AccessRefused(TransportError):
    """The broker refused this user an operation (its permissions); retrying cannot help.

    A publish the user may not make is a ``PublishNotConfirmed`` instead: the contract of
    ``publish`` names one error for "the broker did not take it".
    """

    reason = "access_refused"


class TlsError(TransportError):
    """The broker's certificate was not trusted or not valid for the host name, or the TLS
    handshake failed otherwise. Nothing was sent over the connection; it is not retried."""

    reason = "tls_error"


class PublishNotConfirmed(TransportError):
    """The broker refused the message (nack, no write permission) or could not route it (return)."""

    reason = "publish_not_confirmed"


class PublishNacked(PublishNotConfirmed):
    """The broker refused the message *for now*: a RabbitMQ nack (a queue at its length limit
    with ``reject-publish``, a broker-side failure) or a Pulsar backlog quota. Unlike a missing
    route or permission, the same message may be taken a little later."""

    reason = "publish_nacked"


class PublishOutcomeUnknown(TransportError):
    """No confirm arrived in time; retry with the *same* job id, never a new one."""

    reason = "publish_outcome_unknown"


class AlreadySettled(TransportError):
    """A delivery may be settled exactly once."""

    reason = "already_settled"


class RejectedMessage(ConveyorError):
    """Input that can never succeed; it goes to the dead-letter queue with ``reason``."""

    reason = "rejected"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class MessageTooLarge(RejectedMessage):
    reason = "oversize"


class MalformedMessage(RejectedMessage):
    reason = "malformed"


class UnsupportedContent(RejectedMessage):
    """Labelled as something other than what producers send (JSON, no content encoding).

    Reason ``unsupported_content_type`` (e.g. ``application/x-python-serialize``) or
    ``unsupported_content_encoding`` (e.g. ``gzip``): bytes meant for another reader, never run.
    """

    reason = "unsupported_content_type"


class UnknownJobType(RejectedMessage):
    reason = "unknown_job_type"


class UnknownSchemaVersion(RejectedMessage):
    reason = "unknown_version"


class InvalidPayload(RejectedMessage):
    reason = "invalid_payload"


class PayloadReferenceInvalid(RejectedMessage):
    """A claim check outside the configured store, bucket or prefix, or a malformed key."""

    reason = "payload_reference_invalid"


class PayloadMissing(RejectedMessage):
    """The claim check points at an object the store does not have (deleted, expired)."""

    reason = "payload_missing"


class PayloadIntegrityError(RejectedMessage):
    """The fetched object's size or sha256 differs from the reference: tampered or torn."""

    reason = "payload_integrity"


class JobFailure(ConveyorError):
    """Raise a subclass from a handler to choose the outcome explicitly."""

    reason = "job_failed"


class RetryableError(JobFailure):
    """A transient failure: the job is retried after a backoff delay."""


class PermanentError(JobFailure):
    """A failure that retrying cannot fix: the job is dead-lettered at once."""


class JobTimeout(ConveyorError):
    """The handler exceeded its time limit and was cancelled; retried like any failure."""

    reason = "timeout"


class PayloadStoreUnavailable(ConveyorError):
    """The payload store could not be reached, timed out or failed; worth another try."""

    reason = "payload_store_unavailable"


class CircuitOpen(ConveyorError):
    """A circuit breaker is open; the job was not attempted."""

    reason = "circuit_open"


class CrashLoop(RejectedMessage):
    reason = "crash_loop"


class IdempotencyConflict(RejectedMessage):
    """The idempotency key already succeeded with a different payload; goes to the DLQ."""

    reason = "idempotency_conflict"


class IdempotencyStoreUnavailable(ConveyorError):
    """The processed-key database could not be reached or failed; worth another try."""

    reason = "idempotency_store_unavailable"


class UnknownJob(ConveyorError):
    """No job with this id in the job-state store (a typo, or expired by retention). Not a
    message rejection (no message is involved), but it carries a reason code all the same."""

    reason = "unknown_job"


class JobAlreadyEnded(ConveyorError):
    """An operator cancelled a job that had already succeeded or been dead-lettered: nothing was
    changed (its record stays as it ended). A second cancel of a cancelled job is not this."""

    reason = "job_ended"


class JobStateStoreUnavailable(ConveyorError):
    """The job-state database could not be reached or failed; the writer keeps and retries."""

    reason = "job_state_store_unavailable"


class JobCancelled(ConveyorError):
    """The job was cancelled by an operator: it is acked, never retried or dead-lettered."""

    reason = "cancelled"


class JobNotSucceeded(ConveyorError):
    """A job's result was asked for, but it ended without one (dead-lettered or cancelled)."""

    reason = "job_not_succeeded"

    def __init__(self, message: str, *, state: str) -> None:
        super().__init__(message)
        self.state = state
