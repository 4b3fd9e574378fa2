"""The app ``conveyor worker`` runs in ``bench.processes`` and the bench's processes rows:
``conveyor worker bench.processes_app:jobs``.

A module of its own, importing no more than a worker app would (no rich, no harness), so the
peak RSS the command reports is the command's.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

from bench.conveyor import BenchJob, make_registry
from bench.support import peak_rss_mib
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry

__all__ = ["OUT_ENV", "QUEUE_ENV", "jobs"]

QUEUE_ENV, OUT_ENV = "BENCH_QUEUE", "BENCH_OUT"


def jobs() -> JobRegistry:
    """A no-op handler that times itself; the times go to $BENCH_OUT/<pid>.json at exit."""
    state = {"count": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0}

    async def handler(payload: BenchJob, ctx: JobContext) -> None:
        if not state["count"]:
            state["first"], state["cpu_first"] = time.time(), time.process_time()
        state["count"] += 1
        state["last"], state["cpu_last"] = time.time(), time.process_time()

    def write() -> None:
        # The process's own peak RSS: with --processes 1 this is the ``conveyor worker`` command itself.
        result = {**state, "peak_rss_mib": round(peak_rss_mib(), 1)}
        Path(os.environ[OUT_ENV], f"{os.getpid()}.json").write_text(json.dumps(result))

    atexit.register(write)
    return make_registry(os.environ[QUEUE_ENV], handler)
