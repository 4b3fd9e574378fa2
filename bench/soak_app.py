"""The job the soak runs in real ``conveyor worker`` processes (``bench.soak_app:jobs``).

Each run appends ``<start time> <seconds since publish>`` to $SOAK_LATENCIES (one ``write``
per line: no interleaving between processes). Producer and workers share this machine's clock.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry

JOB_TYPE = "soak.tick"


class Tick(BaseModel):
    sent: float  # time.time() at publish
    seconds: float = 0.005


def jobs() -> JobRegistry:
    registry = JobRegistry()
    path = os.environ["SOAK_LATENCIES"]

    @registry.job(JOB_TYPE, queue=os.environ["SOAK_QUEUE"])
    async def tick(payload: Tick, ctx: JobContext) -> None:
        now = time.time()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{now:.6f} {now - payload.sent:.6f}\n".encode())
        finally:
            os.close(fd)

    return registry
