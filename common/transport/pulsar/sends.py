"""Sends made during one event-loop turn, handed to pulsar-client back to back.

``send_async`` on a connection with no write in progress posts the write to the client's I/O
thread (a wake-up through ``epoll_ctl`` and a contended connection mutex), and releasing and
taking back the GIL around it is a thread switch whenever that thread is waiting to run a
receipt callback. A send that finds a write in progress only queues behind it. Publishes
spread over a loop turn, each after the producer's own work (validation, envelope, encoding),
found the connection idle: in a pipelined publish Conveyor spent far more than the raw
pulsar-client loop's time in ``send_async``, with more context switches per job.
Queued here and sent together once the turn's ready callbacks have run (or every ``BURST``
sends, so a long turn still feeds the broker as it goes), they leave as the raw loop's do.

Nothing changes for the caller: each send has its own receipt future, settled through the
``LoopInbox`` with the client's own result. A send whose waiter is cancelled before its burst
is never handed to the client (its future is done: skipped); one the client refuses at once
(``send_async`` raising) fails only its own future, and the rest of the burst still goes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor.common.transport.pulsar.inbox import LoopInbox

__all__ = ["BURST", "SendQueue"]

BURST = 64  # sends handed over at once at most: bounds what a send waits behind in a long turn


class SendQueue:
    __slots__ = ("inbox", "loop", "_queued", "_scheduled")

    def __init__(self, inbox: LoopInbox) -> None:
        self.inbox = inbox
        self.loop = inbox.loop
        # (the client's native producer, the built message, its receipt future)
        self._queued: list[tuple[Any, Any, asyncio.Future[Any]]] = []
        self._scheduled = False

    @classmethod
    def here(cls) -> SendQueue:
        return cls(LoopInbox.here())

    def send(self, native: Any, message: Any) -> asyncio.Future[Any]:
        """Queue ``message`` for ``native.send_async``; the future is its receipt (the message id)."""
        receipt: asyncio.Future[Any] = self.loop.create_future()
        queued = self._queued
        queued.append((native, message, receipt))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._end_of_turn)
        elif len(queued) >= BURST:
            self._send_queued()
        return receipt

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self._send_queued()

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        completion = self.inbox.completion
        for native, message, receipt in queued:
            if receipt.done():  # its publish was cancelled first: never sent
                continue
            try:
                native.send_async(message, completion(receipt))
            except Exception as exc:  # this send only; the others still go
                receipt.set_exception(exc)
