"""A sync (``def``) handler for the drain tests: ``start`` and ``done <job id> <attempt>`` lines
go to $E2E_OUT around a blocking sleep."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry


class Nap(BaseModel):
    seconds: float


def _note(event: str, ctx: JobContext) -> None:
    with open(os.environ["E2E_OUT"], "a", encoding="utf-8") as out:
        out.write(f"{event} {ctx.job_id} {ctx.attempt}\n")


def jobs() -> JobRegistry:
    registry = JobRegistry()

    @registry.job("e2e.sync_nap", queue=os.environ["E2E_QUEUE"], timeout=60)
    def sync_nap(payload: Nap, ctx: JobContext) -> None:
        _note("start", ctx)
        time.sleep(payload.seconds)
        _note("done", ctx)

    return registry


def no_jobs() -> JobRegistry:
    """A registry whose jobs were never registered (their modules not imported)."""
    return JobRegistry()
