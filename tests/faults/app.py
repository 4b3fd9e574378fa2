"""The application the fault scenarios run in real ``conveyor worker`` processes.

Every run of the handler appends ``job_id attempt pid`` to $FAULT_EXECUTIONS (an execution,
duplicates allowed: at-least-once). Its *effect* is a row in the PostgreSQL table
$FAULT_EFFECTS_TABLE, written in the same transaction as the idempotency record
(``job_transaction``), so a redelivered job that already succeeded is skipped and the effect
exists at most once: that is what "duplicate effects = 0" checks.

``mode`` picks the misbehaviour: ``fail`` (permanent error → dead letter), ``hang_once`` (the
first run never returns: the job timeout cuts it), ``block_once`` (the first run blocks the
event loop: the stall watchdog ends the process), ``depends`` (fails while the file
$FAULT_OUTAGE_FLAG exists: a downstream outage behind the ``downstream`` breaker), ``broken``
(a permanent failure while that file exists: a bug, fixed before the DLQ is replayed),
``crash_always`` (kills its worker process on every run), ``block_always`` and ``hang_always``
(``block_once`` and ``hang_once`` on every run). ``fault.sync_hang`` is a sync handler whose
thread never returns.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import PermanentError, RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.consumer.middleware.idempotency import job_transaction

JOB_TYPE = "fault.work"
SYNC_HANG_JOB_TYPE = "fault.sync_hang"  # a sync (def) handler whose thread never returns


class Work(BaseModel):
    n: int
    seconds: float = 0.02
    mode: Literal["ok", "fail", "hang_once", "block_once", "depends", "broken", "crash_always", "block_always", "hang_always"] = "ok"


class DownstreamUnavailable(RetryableError):
    """The dependency the job calls is down."""


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # one write per line: no interleaving
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _first_run(job_id: str) -> bool:
    """True exactly once per job across every worker process (an O_EXCL marker file)."""
    marker = Path(os.environ["FAULT_MARKERS"]) / job_id
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


def jobs() -> JobRegistry:
    registry = JobRegistry()
    effects = os.environ["FAULT_EFFECTS_TABLE"]

    @registry.job(JOB_TYPE, queue=os.environ["FAULT_QUEUE"], timeout=float(os.environ.get("FAULT_TIMEOUT", "5")),
                  retry=RetryPolicy(max_attempts=10, base=0.2, factor=2, cap=2), breaker="downstream")
    async def work(payload: Work, ctx: JobContext) -> None:
        _append(os.environ["FAULT_EXECUTIONS"], f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
        if payload.mode == "crash_always":
            os.kill(os.getpid(), signal.SIGKILL)  # the bug: e.g. a C extension that segfaults on this input
        if payload.mode == "fail":
            raise PermanentError("this job is meant to be dead-lettered")
        if payload.mode == "hang_once" and _first_run(ctx.job_id):
            await asyncio.sleep(3600)  # the job timeout cancels this
        if payload.mode == "hang_always":
            await asyncio.sleep(3600)  # every run: the job timeout cuts each one
        if payload.mode == "block_always":
            time.sleep(float(os.environ.get("FAULT_BLOCK_SECONDS", "30")))  # every run blocks the loop
        if payload.mode == "block_once" and _first_run(ctx.job_id):
            time.sleep(float(os.environ.get("FAULT_BLOCK_SECONDS", "30")))  # the bug: blocks the loop
        outage = Path(os.environ["FAULT_OUTAGE_FLAG"]).exists()
        if payload.mode == "depends" and outage:
            raise DownstreamUnavailable("downstream is down")
        if payload.mode == "broken" and outage:
            raise PermanentError("a bug, until it is fixed and the DLQ replayed")
        await asyncio.sleep(payload.seconds)
        async with job_transaction(ctx) as tx:
            await tx.connection.execute(
                f"INSERT INTO {effects} (job_id, n, pid) VALUES ($1, $2, $3)", ctx.job_id, payload.n, os.getpid()
            )

    @registry.job(SYNC_HANG_JOB_TYPE, queue=os.environ["FAULT_QUEUE"],
                  timeout=float(os.environ.get("FAULT_TIMEOUT", "5")))
    def sync_hang(payload: Work, ctx: JobContext) -> None:
        _append(os.environ["FAULT_EXECUTIONS"], f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
        time.sleep(3600)  # the bug: a C call that never returns; no thread can be stopped

    return registry
