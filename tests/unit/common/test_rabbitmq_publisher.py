"""rabbitmq.publisher maps what aiormq does to a publish awaiting its confirm onto the error tree."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor.common.errors import PublishOutcomeUnknown
from conveyor.common.transport.rabbitmq.properties import JobProperties
from conveyor.common.transport.rabbitmq.publisher import ExchangePublisher
from conveyor.common.transport.rabbitmq.topology import Target
from tests.unit.common.test_rabbitmq_frames import FakeChannel

TARGET = Target("q.jobs", "q", None)


def _publisher(channel: FakeChannel) -> ExchangePublisher:
    async def shared() -> Any:
        return channel

    publisher = ExchangePublisher(shared_channel=shared, probe_channel=shared, scrub=str)
    publisher._proven.add(TARGET.exchange)  # the exchange was checked: the shared channel's path
    return publisher


async def _awaiting_its_confirm(channel: FakeChannel) -> asyncio.Task[None]:
    send = asyncio.create_task(_publisher(channel).publish(
        TARGET, b"{}", JobProperties(delivery_mode=2, message_id="m-1"), queue="q", kind="job"))
    while not channel.confirmations:
        await asyncio.sleep(0)
    return send


async def test_a_confirm_rejected_with_the_readers_cancellation_is_an_unknown_outcome() -> None:
    # What aiormq does to the confirms still awaited when a missed heartbeat closes the connection
    # (a black-holed broker): `conveyor dlq replay` ended in a CancelledError traceback.
    channel = FakeChannel()
    send = await _awaiting_its_confirm(channel)
    channel.confirmations[1].set_exception(asyncio.CancelledError())
    with pytest.raises(PublishOutcomeUnknown, match="may or may not be stored"):
        await send


async def test_a_publish_that_is_itself_cancelled_stays_cancelled() -> None:
    channel = FakeChannel()
    send = await _awaiting_its_confirm(channel)
    send.cancel()
    with pytest.raises(asyncio.CancelledError):
        await send
