"""What one console keeps while it runs: its broker connection, history, schemas and sessions.

One instance per application (``app[STATE]``), nothing global. Operations on one DLQ run one
at a time (a lock per queue): a browse takes every entry it reads and gives them back at the
end, so a second browse or a purge running beside it would see a queue with holes.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiohttp import web

from conveyor.common.job_state.base import JobStateStore
from conveyor.common.transport.base import Transport
from conveyor.consumer.ops.console.config import ConsoleConfig
from conveyor.consumer.ops.console.history import OverviewHistory
from conveyor.consumer.ops.console.replays import ReplayRun, Replays
from conveyor.consumer.ops.console.schema_catalog import SchemaCatalog
from conveyor.consumer.ops.dead_letters import DeadLetters
from conveyor.consumer.payloads import PayloadResolver

__all__ = ["MAX_SESSIONS", "STATE", "ConsoleState", "QueueBusy"]

MAX_SESSIONS = 1000


class QueueBusy(web.HTTPConflict):
    """A background replay holds the queue's DLQ; the app renders this as the busy page."""

    def __init__(self, run: ReplayRun) -> None:
        super().__init__(text=f"a replay of {run.queue} is running: /replays/{run.id} (reason: busy)",
                         headers={"X-Conveyor-Reason": "busy"})
        self.run = run


@dataclass
class ConsoleState:
    config: ConsoleConfig
    transport: Transport
    history: OverviewHistory
    schemas: SchemaCatalog = field(default_factory=SchemaCatalog)
    redact: Callable[[str], str] = str
    max_message_bytes: int = 1024 * 1024
    payloads: PayloadResolver | None = None
    job_states: JobStateStore | None = None  # the jobs page, when one is configured
    secret_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    # Session ids that gave the token, oldest first; the oldest is forgotten past MAX_SESSIONS
    # (a sign-in loop cannot grow it without end).
    signed_in: dict[str, None] = field(default_factory=dict, repr=False)
    replays: Replays = field(default_factory=Replays, repr=False)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, repr=False)

    def sign_in(self, session: str) -> None:
        self.signed_in[session] = None
        while len(self.signed_in) > MAX_SESSIONS:
            del self.signed_in[next(iter(self.signed_in))]

    def check_queue(self, queue: str) -> str:
        if queue not in self.config.queues:
            raise web.HTTPNotFound(text=f"this console does not watch a queue named {queue!r} (reason: unknown_queue)")
        return queue

    def check_idle(self, queue: str) -> None:
        """Refuse to wait behind a background replay of ``queue`` (``QueueBusy``: 409 at once)."""
        run = self.replays.running(queue)
        if run is not None:
            raise QueueBusy(run)

    @contextlib.asynccontextmanager
    async def dead_letters(self, queue: str, *, replay: bool = False) -> AsyncIterator[DeadLetters]:
        """The queue's DLQ tooling, used by one operation at a time; ``replay``: the background
        replay itself (it may wait for the operation before it)."""
        self.check_queue(queue)
        if not replay:
            self.check_idle(queue)
        lock = self._locks.setdefault(queue, asyncio.Lock())
        async with lock:
            yield DeadLetters(self.transport, queue, payloads=self.payloads, max_message_bytes=self.max_message_bytes)


STATE = web.AppKey("conveyor_console_state", ConsoleState)
