"""Replays the console runs in the background, so a rate-limited one does not hold a request.

A replay at 2 entries a second through 600 entries takes five minutes: the request that asks
for it returns at once with a page that follows its progress (``ReplayReport``, as ``conveyor
dlq replay`` reports it). While it runs, it holds its queue's DLQ (entries it took stay taken
until it ends), so the console answers other requests on that queue with "busy" rather than
waiting behind it. The last ``KEPT`` runs are remembered; the console cancels the rest when it
stops (a cancelled replay gives back what it held: nothing is lost).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from conveyor.common.errors import ConveyorError
from conveyor.consumer.ops.dead_letters import ReplayReport

__all__ = ["KEPT", "ReplayRun", "Replays"]

log = logging.getLogger(__name__)
KEPT = 50


@dataclass
class ReplayRun:
    queue: str
    rate: float | None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    report: ReplayReport = field(default_factory=ReplayReport)
    finished: datetime | None = None
    error: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.finished is not None


class Replays:
    def __init__(self) -> None:
        self._runs: dict[str, ReplayRun] = {}

    def get(self, run_id: str) -> ReplayRun | None:
        return self._runs.get(run_id)

    def running(self, queue: str) -> ReplayRun | None:
        return next((run for run in self._runs.values() if run.queue == queue and not run.done), None)

    def start(self, queue: str, rate: float | None,
              work: Callable[[Callable[[ReplayReport], None]], Awaitable[ReplayReport]]) -> ReplayRun:
        """Run ``work(progress)`` (a ``DeadLetters.replay``) in the background."""
        run = ReplayRun(queue=queue, rate=rate)

        def progress(report: ReplayReport) -> None:
            run.report = report

        async def go() -> None:
            try:
                run.report = await work(progress)
            except ConveyorError as exc:
                run.error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # shown on the run's page; the console stays up
                log.exception("console: a replay failed")
                run.error = f"{type(exc).__name__}: {exc}"
            finally:
                run.finished = datetime.now(UTC)

        run.task = asyncio.create_task(go(), name=f"console-replay-{run.id}")
        self._runs[run.id] = run
        for old in [r for r in self._runs.values() if r.done][:-KEPT]:
            del self._runs[old.id]
        return run

    async def cancel_all(self) -> None:
        tasks = [run.task for run in self._runs.values() if run.task is not None and not run.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
