"""The application of the ``--processes`` tests: each run of ``e2e.work`` appends
``start|done <job id> <attempt> <pid>`` lines to $E2E_OUT (one ``write`` each: whole lines
from several processes), so a test sees which worker process ran what and what it left."""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel

from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry


class Work(BaseModel):
    seconds: float
    block: bool = False  # time.sleep on the loop: the stall watchdog ends the process


def _note(event: str, ctx: JobContext) -> None:
    fd = os.open(os.environ["E2E_OUT"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{event} {ctx.job_id} {ctx.attempt} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def registry_for(queue: str) -> JobRegistry:
    registry = JobRegistry()

    @registry.job("e2e.work", queue=queue, timeout=60)
    async def work(payload: Work, ctx: JobContext) -> None:
        _note("start", ctx)
        if payload.block:
            time.sleep(payload.seconds)
        await asyncio.sleep(payload.seconds)
        _note("done", ctx)

    return registry


def jobs() -> JobRegistry:
    return registry_for(os.environ["E2E_QUEUE"])
