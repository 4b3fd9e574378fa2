"""The RabbitMQ control channel: a fanout exchange per channel, an exclusive queue per subscriber.

``broadcast`` publishes to the exchange (declared idempotently; auto-deleted with its last
binding, so test channels leave nothing behind on a shared broker; the messages are not
kept: each subscriber's queue is exclusive and auto-deleted, so a process that is gone misses
what it did not receive, as the contract says). A subscription lives on a *robust* channel of
the consumer connection, so aio-pika re-declares its queue and binding and re-consumes after a
reconnect.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from conveyor.common.transport.base import ConsumerHandle, ControlHandler

__all__ = ["AmqpSubscription", "declare_control_exchange"]

log = logging.getLogger(__name__)


async def declare_control_exchange(channel: Any, name: str) -> None:
    """On a raw aiormq channel: the fanout exchange of control channel ``name``."""
    await channel.exchange_declare(exchange=name, exchange_type="fanout", durable=False, auto_delete=True)


class AmqpSubscription(ConsumerHandle):
    def __init__(self, connection: AbstractRobustConnection, channel_name: str, handler: ControlHandler) -> None:
        self._connection = connection
        self._name = channel_name
        self._handler = handler
        self._channel: AbstractRobustChannel | None = None

    async def start(self) -> None:
        channel = await self._connection.channel()
        try:
            exchange = await channel.declare_exchange(
                self._name, aio_pika.ExchangeType.FANOUT, durable=False, auto_delete=True
            )
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange)
            await queue.consume(self._on_message, no_ack=True)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        self._channel = channel

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._handler(message.body)
        except Exception:  # one bad broadcast must not stop the subscription
            log.exception("control message handler failed", extra={"channel": self._name})

    @property
    def attached(self) -> bool:
        return self._channel is not None and not self._channel.is_closed and self._connection.connected.is_set()

    async def cancel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
