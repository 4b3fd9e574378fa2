"""The job the recipes publish: a welcome email after a sign-up (what a service's jobs module holds)."""

from __future__ import annotations

import os

from pydantic import BaseModel

from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry


class Welcome(BaseModel):
    email: str


def make_jobs(queue: str | None = None) -> JobRegistry:
    """The registry; the tests route it to a queue of their own (RECIPE_QUEUE for subprocesses)."""
    jobs = JobRegistry()

    @jobs.job("email.welcome", queue=queue or os.environ.get("RECIPE_QUEUE", "emails"))
    async def welcome(payload: Welcome, ctx: JobContext) -> None:
        return None

    return jobs
