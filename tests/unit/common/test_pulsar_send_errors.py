"""What a failed Pulsar send means for the caller: a backlog quota is a nack (taken again once
consumers catch up, so the producer and the outbox relay retry it), a refusal that will not
change is final, an unsent message is a plain transport error, anything else an unknown outcome."""

from __future__ import annotations

import pulsar
import pytest
from pulsar.asyncio import PulsarException

from conveyor.common.errors import PublishNacked, PublishNotConfirmed, PublishOutcomeUnknown, TransportError
from conveyor.common.transport.pulsar import PulsarTransport


@pytest.fixture
def transport() -> PulsarTransport:
    return PulsarTransport("pulsar://127.0.0.1:1")  # never connected: the mapping needs no broker


@pytest.mark.parametrize("result", [pulsar.Result.ProducerBlockedQuotaExceededError,
                                    pulsar.Result.ProducerBlockedQuotaExceededException])
def test_a_backlog_quota_is_a_nack(transport: PulsarTransport, result: pulsar.Result) -> None:
    error = transport._send_error("q", PulsarException(result))
    assert isinstance(error, PublishNacked) and "for now" in str(error)


@pytest.mark.parametrize("result", [pulsar.Result.MessageTooBig, pulsar.Result.TopicTerminated,
                                    pulsar.Result.AuthorizationError])
def test_a_refusal_that_will_not_change_is_final(transport: PulsarTransport, result: pulsar.Result) -> None:
    error = transport._send_error("q", PulsarException(result))
    assert isinstance(error, PublishNotConfirmed) and not isinstance(error, PublishNacked)


def test_an_unsent_message_and_an_unknown_outcome(transport: PulsarTransport) -> None:
    unsent = transport._send_error("q", PulsarException(pulsar.Result.ProducerQueueIsFull))
    assert isinstance(unsent, TransportError) and not isinstance(unsent, PublishNotConfirmed)
    assert isinstance(transport._send_error("q", PulsarException(pulsar.Result.Timeout)), PublishOutcomeUnknown)
