"""The supervisor's /healthz, /readyz and /metrics: one endpoint for all its worker processes.

/metrics is prometheus-client's multiprocess aggregate of the workers' files (see
``conveyor.common.metrics`` for how each series is combined) followed by the supervisor's own
series. /readyz is 200 only while every worker process is ready (``beacon``); /healthz answers
while the supervisor's loop turns, with each process's state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from conveyor.consumer.http import Endpoints, Reply

__all__ = ["SupervisorHttp"]


class SupervisorHttp(Endpoints):
    def __init__(
        self,
        *,
        metrics_dir: Path,
        own: CollectorRegistry,
        processes: Callable[[], list[dict[str, Any]]],
        ready: Callable[[], bool],
        host: str,
        port: int,
    ) -> None:
        super().__init__(host, port)
        self._workers = CollectorRegistry()
        MultiProcessCollector(self._workers, path=str(metrics_dir))  # type: ignore[no-untyped-call]
        self._own = own
        self._processes = processes
        self._ready = ready

    async def _healthz(self) -> Reply:
        return Reply.json({"status": "ok", "processes": self._processes()})

    async def _readyz(self) -> Reply:
        ready = self._ready()
        return Reply.json({"ready": ready, "processes": self._processes()}, status=200 if ready else 503)

    async def _metrics(self) -> Reply:
        # The workers' files are read from disk: off the loop.
        workers = await asyncio.to_thread(generate_latest, self._workers)
        return Reply(200, workers + generate_latest(self._own))
