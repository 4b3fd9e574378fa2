"""The job the console's browser tests dead-letter and then fix: a resize that refuses a width ≤ 0.

Each success appends ``<job id> <width>`` to $E2E_OUT; the queue is $E2E_QUEUE.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import PermanentError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry

JOB = "console.resize"


class Resize(BaseModel):
    image_id: int
    width: int


def make_jobs(queue: str) -> JobRegistry:
    registry = JobRegistry()

    @registry.job(JOB, queue=queue, timeout=30, retry=RetryPolicy(max_attempts=1))
    async def resize(payload: Resize, ctx: JobContext) -> None:
        if payload.width <= 0:
            raise PermanentError(f"width must be positive, got {payload.width}")
        with open(os.environ["E2E_OUT"], "a", encoding="utf-8") as out:
            out.write(f"{ctx.job_id} {payload.width}\n")

    return registry


def jobs() -> JobRegistry:
    return make_jobs(os.environ["E2E_QUEUE"])
