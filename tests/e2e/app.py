"""A tiny application for the CLI tests: each job appends its id to $E2E_OUT when done.

``e2e.broken`` is a bug that is still live: it appends its id and attempt to $E2E_OUT, then
fails, every time; ``E2E_BROKEN_ATTEMPTS`` (default 1) is its attempt budget.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry


class Nap(BaseModel):
    seconds: float


def jobs() -> JobRegistry:
    registry = JobRegistry()
    queue = os.environ.get("E2E_QUEUE", "conveyor.default")

    @registry.job("e2e.nap", queue=queue, timeout=30)
    async def nap(payload: Nap, ctx: JobContext) -> None:
        await asyncio.sleep(payload.seconds)
        with open(os.environ["E2E_OUT"], "a", encoding="utf-8") as out:
            out.write(f"{ctx.job_id} {ctx.attempt}\n")

    attempts = int(os.environ.get("E2E_BROKEN_ATTEMPTS", "1"))

    @registry.job("e2e.broken", queue=queue, timeout=30, retry=RetryPolicy(max_attempts=attempts, base=0.1, jitter=0))
    async def broken(payload: Nap, ctx: JobContext) -> None:
        with open(os.environ["E2E_OUT"], "a", encoding="utf-8") as out:
            out.write(f"{ctx.job_id} {ctx.attempt}\n")
        raise RuntimeError("the bug is still live")

    return registry
