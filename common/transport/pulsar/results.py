"""What a failed Pulsar send or producer creation means for the caller, by the client's result
code: refused for good, refused for now (a backlog quota: taken again once consumers catch up,
so the producer and the outbox relay retry it), not sent at all, or an unknown outcome."""

from __future__ import annotations

import pulsar
from pulsar.asyncio import PulsarException

from conveyor.common.errors import PublishNacked, PublishNotConfirmed, PublishOutcomeUnknown, TransportError
from conveyor.common.transport.pulsar.consumer import result_of

__all__ = ["producer_error", "send_error"]

_Result = pulsar.Result
# The broker or client refused the message: it was not stored, and sending it again will not help.
_REFUSED = {
    _Result.MessageTooBig,
    _Result.InvalidMessage,
    _Result.TopicTerminated,
    _Result.ProducerBlockedQuotaExceededError,
    _Result.ProducerBlockedQuotaExceededException,
    _Result.NotAllowedError,
    _Result.AuthorizationError,
    _Result.IncompatibleSchema,
    _Result.CryptoError,
}
_REFUSED_FOR_NOW = {  # a backlog quota: taken again once consumers catch up
    _Result.ProducerBlockedQuotaExceededError,
    _Result.ProducerBlockedQuotaExceededException,
}
# Not sent at all (closed producer, full client queue): safe to send again.
_NOT_SENT = {
    _Result.AlreadyClosed,
    _Result.ProducerNotInitialized,
    _Result.ProducerQueueIsFull,
    _Result.MemoryBufferIsFull,
}


def send_error(queue: str, exc: PulsarException) -> TransportError:
    """The error a failed send to ``queue`` raises."""
    result = result_of(exc)
    if result in _REFUSED_FOR_NOW:
        return PublishNacked(f"broker refused the message for {queue!r} for now ({result.name})")
    if result in _REFUSED:
        return PublishNotConfirmed(f"broker refused the message for {queue!r} ({result.name})")
    if result in _NOT_SENT:
        return TransportError(f"message for {queue!r} not sent ({result.name})")
    return PublishOutcomeUnknown(
        f"no send receipt for {queue!r} ({result.name}): the message may or may not be stored"
    )


def producer_error(queue: str, exc: PulsarException) -> TransportError:
    """The error a failed producer creation for ``queue`` raises."""
    result = result_of(exc)
    if result in _REFUSED_FOR_NOW:
        # A topic past its backlog quota takes no new producer (a producer created before goes
        # on until the broker's periodic check): the same backpressure as a nacked send.
        return PublishNacked(f"broker refuses producers for {queue!r} for now ({result.name})")
    return TransportError(f"cannot create a producer for {queue!r} ({result.name})")
