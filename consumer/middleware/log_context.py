"""Middleware: every log line written while a job runs carries its job fields."""

from __future__ import annotations

import logging
from typing import Any

from conveyor.common.jobs.context import JobContext
from conveyor.common.logging import job_log_fields
from conveyor.common.middleware import ConsumeNext, Middleware

__all__ = ["LogContextMiddleware"]

log = logging.getLogger("conveyor.jobs")


class LogContextMiddleware(Middleware):
    """Adds job_id, job_type, attempt and correlation_id to log lines; logs failures.

    A failed attempt is a warning, whatever comes next (a retry, a dead letter): it is seen at
    the default level, so a job that keeps failing before its retries run out is not silent."""

    async def consume(self, ctx: JobContext, call_next: ConsumeNext) -> Any:
        # What JobLogContext does, without an object per job.
        token = job_log_fields.set(ctx.log_fields())
        try:
            result = await call_next(ctx)
        except Exception as exc:
            # Type only: exception messages can carry payload values (secrets).
            log.warning("job attempt failed", extra={"error_type": type(exc).__name__})
            raise
        else:
            if log.isEnabledFor(logging.DEBUG):  # what debug() asks first, without its call per job
                log.debug("job succeeded")
            return result
        finally:
            job_log_fields.reset(token)
