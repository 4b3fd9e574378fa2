"""What a failed Pulsar send means for the caller: a backlog quota is a nack (taken again once
consumers catch up, so the producer and the outbox relay retry it), a refusal that will not
change is final, an unsent message is a plain transport error, anything else an unknown outcome."""

from __future__ import annotations

import pulsar
import pytest
from pulsar.asyncio import PulsarException

from conveyor.common.errors import PublishNacked, PublishNotConfirmed, PublishOutcomeUnknown, TransportError
from conveyor.common.transport.pulsar.results import producer_error, send_error


@pytest.mark.parametrize("result", [pulsar.Result.ProducerBlockedQuotaExceededError,
                                    pulsar.Result.ProducerBlockedQuotaExceededException])
def test_a_backlog_quota_is_a_nack(result: pulsar.Result) -> None:
    error = send_error("q", PulsarException(result))
    assert isinstance(error, PublishNacked) and "for now" in str(error)


@pytest.mark.parametrize("result", [pulsar.Result.MessageTooBig, pulsar.Result.TopicTerminated,
                                    pulsar.Result.AuthorizationError])
def test_a_refusal_that_will_not_change_is_final(result: pulsar.Result) -> None:
    error = send_error("q", PulsarException(result))
    assert isinstance(error, PublishNotConfirmed) and not isinstance(error, PublishNacked)


def test_an_unsent_message_and_an_unknown_outcome() -> None:
    unsent = send_error("q", PulsarException(pulsar.Result.ProducerQueueIsFull))
    assert isinstance(unsent, TransportError) and not isinstance(unsent, PublishNotConfirmed)
    assert isinstance(send_error("q", PulsarException(pulsar.Result.Timeout)), PublishOutcomeUnknown)


def test_a_producer_refused_for_a_backlog_quota_is_a_nack_and_any_other_refusal_is_not() -> None:
    quota = producer_error("q", PulsarException(pulsar.Result.ProducerBlockedQuotaExceededError))
    assert isinstance(quota, PublishNacked) and "for now" in str(quota)
    other = producer_error("q", PulsarException(pulsar.Result.AuthorizationError))
    assert isinstance(other, TransportError) and not isinstance(other, PublishNotConfirmed)
