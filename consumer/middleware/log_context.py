"""Middleware: every log line written while a job runs carries its job fields."""

from __future__ import annotations

import logging
from typing import Any

from conveyor.common.jobs.context import JobContext
from conveyor.common.logging import job_log_fields
from conveyor.common.middleware import ConsumeNext, Middleware

__all__ = ["LogContextMiddleware"]

log = logging.getLogger("conveyor.jobs")

_FAILED = "job attempt failed"


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
            _failed(type(exc).__name__)
            raise
        else:
            if log.isEnabledFor(logging.DEBUG):  # what debug() asks first, without its call per job
                log.debug("job succeeded")
            return result
        finally:
            job_log_fields.reset(token)


def _failed(error_type: str) -> None:
    """``log.warning(_FAILED, extra={"error_type": error_type})``, without ``findCaller``.

    A failed attempt is the line every retried job writes, and ``Logger._log`` walks the stack
    to find where it was called from: about a seventh of the line's cost (issue 18, retry path).
    The place is known, so the record gets it directly: this function's file, first line and
    name. Everything else is ``Logger.warning``'s: level check, ``makeRecord`` (the same record
    attributes), the logger's filters, its handlers and propagation.
    """
    if log.isEnabledFor(logging.WARNING):
        record = log.makeRecord(
            log.name, logging.WARNING, _WHERE.co_filename, _WHERE.co_firstlineno, _FAILED, (), None,
            _WHERE.co_name, {"error_type": error_type},
        )
        log.handle(record)


_WHERE = _failed.__code__
