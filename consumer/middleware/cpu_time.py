"""Per-job CPU time: ``conveyor_job_cpu_seconds{job_type}``, the cost-per-run indicator.

``time.process_time`` around the handler: the CPU the whole process used while it ran, which
works for async handlers (on the loop thread) and sync ones (in the worker's threads) alike.
Exact at concurrency 1; with jobs running side by side it also counts theirs (an upper bound).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from conveyor.common.metrics import WorkerMetrics
from conveyor.common.middleware import ConsumeNext, Middleware

if TYPE_CHECKING:
    from conveyor.common.jobs.context import JobContext

__all__ = ["CpuTimeMiddleware"]


class CpuTimeMiddleware(Middleware):
    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    async def consume(self, ctx: JobContext, call_next: ConsumeNext) -> Any:
        begin = time.process_time()
        try:
            return await call_next(ctx)
        finally:
            used = time.process_time() - begin
            self._metrics.observer(self._metrics.job_cpu, self._metrics.label(ctx.job_type))(used)
