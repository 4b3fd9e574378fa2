"""The application the accounting tests run in real worker processes.

Each finished job appends ``job_id attempt pid`` to $ACCOUNTING_OUT (O_APPEND: one write
per line, so concurrent workers never interleave). Jobs whose ``fail`` flag is set raise
PermanentError, so both final states (succeeded, dead-lettered) occur in every run.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import PermanentError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry


class Work(BaseModel):
    n: int
    seconds: float = 0.02
    fail: bool = False


def jobs() -> JobRegistry:
    registry = JobRegistry()

    @registry.job("acct.work", queue=os.environ["ACCOUNTING_QUEUE"], timeout=30,
                  retry=RetryPolicy(max_attempts=5, base=0.2, factor=2, cap=2))
    async def work(payload: Work, ctx: JobContext) -> None:
        await asyncio.sleep(payload.seconds)
        if payload.fail:
            raise PermanentError("this job is meant to be dead-lettered")
        line = f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n".encode()
        fd = os.open(os.environ["ACCOUNTING_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    return registry
