"""Per-job CPU time: ``conveyor_job_cpu_seconds{job_type}``, the cost-per-run indicator.

``time.process_time`` around the handler: the CPU the whole process used while it ran, which
works for async handlers (on the loop thread) and sync ones (in the worker's threads) alike.
Exact at concurrency 1; with jobs running side by side it also counts theirs (an upper bound).

Sampled: the first run of each job type and then one in ``every`` (``WorkerConfig.cpu_time_every``,
default 16). Reading the process CPU clock is a system call each time (no vDSO for it), and
the two reads plus the observation were about a twentieth of a trivial job's whole cost; an
indicator of cost per run needs a steady sample, not every run. ``every=1`` measures all.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from conveyor.common.errors import ConfigurationError
from conveyor.common.metrics import WorkerMetrics
from conveyor.common.middleware import ConsumeNext, Middleware

if TYPE_CHECKING:
    from conveyor.common.jobs.context import JobContext

__all__ = ["CpuTimeMiddleware"]


class CpuTimeMiddleware(Middleware):
    def __init__(self, metrics: WorkerMetrics, *, every: int = 16) -> None:
        if every < 1:
            raise ConfigurationError(f"cpu_time_every must be at least 1, not {every}")
        self._metrics = metrics
        self._every = every
        self._runs: dict[str, int] = {}  # by job type: runs since the last measured one

    async def consume(self, ctx: JobContext, call_next: ConsumeNext) -> Any:
        job_type = ctx.job_type
        runs = self._runs.get(job_type, 0)
        self._runs[job_type] = (runs + 1) % self._every
        if runs:
            return await call_next(ctx)
        begin = time.process_time()
        try:
            return await call_next(ctx)
        finally:
            used = time.process_time() - begin
            self._metrics.observer(self._metrics.job_cpu, self._metrics.label(ctx.job_type))(used)
