"""The Pulsar control channel: a non-persistent topic, one exclusive subscription per subscriber.

Non-persistent: the broker keeps nothing, a subscriber gets only what is sent while it is
connected, as the contract says. Each subscriber has a subscription of its own (a random
name), so every one of them gets every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import pulsar
from pulsar.asyncio import PulsarException

from conveyor.common.transport.base import ConsumerHandle, ControlHandler

__all__ = ["PulsarSubscription", "control_topic"]

log = logging.getLogger(__name__)


def control_topic(tenant: str, namespace: str, channel: str) -> str:
    return f"non-persistent://{tenant}/{namespace}/{channel}"


class PulsarSubscription(ConsumerHandle):
    def __init__(self, client: Any, topic: str, handler: ControlHandler) -> None:
        self._client = client
        self._topic = topic
        self._handler = handler
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = await self._client.subscribe(
            self._topic, f"conveyor-control-{uuid.uuid4().hex}", consumer_type=pulsar.ConsumerType.Exclusive,
        )
        self._task = asyncio.get_running_loop().create_task(self._receive())

    async def _receive(self) -> None:
        while True:
            try:
                message = await self._consumer.receive()
            except PulsarException:
                if self._task is None:
                    return  # cancelled
                await asyncio.sleep(1.0)  # the client reconnects on its own
                continue
            with contextlib.suppress(PulsarException):
                await self._consumer.acknowledge(message)
            try:
                await self._handler(message.data())
            except Exception:  # one bad broadcast must not stop the subscription
                log.exception("control message handler failed", extra={"topic": self._topic})

    @property
    def attached(self) -> bool:
        return self._task is not None and not self._task.done()

    async def cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(PulsarException, asyncio.TimeoutError, RuntimeError):
                await asyncio.wait_for(consumer.close(), 10.0)
