"""A tiny application for the CLI tests: each job appends its id to $E2E_OUT when done."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

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

    return registry
