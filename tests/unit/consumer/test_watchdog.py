"""The stall watchdog: a blocked event loop is noticed, named and (when configured) ends the process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from conveyor.common.errors import ConfigurationError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.watchdog import EXIT_CODE, StallWatchdog, WatchdogConfig
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


@contextlib.asynccontextmanager
async def _running(broker: MemoryBroker, jobs: JobRegistry, watchdog: WatchdogConfig,
                   exits: list[int]) -> AsyncIterator[tuple[Producer, Worker]]:
    """A worker with this watchdog whose exit is recorded (the test process must survive)."""
    transport = MemoryTransport(broker)
    await transport.connect()
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
        worker = Worker(transport, jobs, config=WorkerConfig(watchdog=watchdog))
        worker.watchdog._exit = exits.append
        async with worker:
            yield producer, worker


def a_blocking_call(seconds: float) -> None:
    time.sleep(seconds)  # the bug the watchdog exists for: blocking code on the loop


async def test_a_blocked_loop_is_logged_with_its_stack_and_the_process_exits(caplog: pytest.LogCaptureFixture) -> None:
    exits: list[int] = []
    stalls: list[None] = []
    watchdog = StallWatchdog(
        WatchdogConfig(warn_after=0.2, exit_after=0.5, interval=0.05),
        in_flight=lambda: ["job-1"],
        on_stall=lambda: stalls.append(None),
        exit_process=exits.append,
    )
    caplog.set_level(logging.ERROR, logger="conveyor.consumer.watchdog")
    watchdog.start()
    try:
        await asyncio.sleep(0.1)
        a_blocking_call(0.9)
        await asyncio.sleep(0.1)
    finally:
        await watchdog.stop()
    assert exits == [EXIT_CODE]
    assert len(stalls) == 1 and watchdog.stalls == 1
    blocked = [r for r in caplog.records if r.getMessage().startswith("event loop blocked:")]
    assert len(blocked) == 1
    assert "a_blocking_call" in blocked[0].loop_stack  # type: ignore[attr-defined]
    assert blocked[0].in_flight_job_ids == ["job-1"]  # type: ignore[attr-defined]


async def test_a_turning_loop_is_never_reported() -> None:
    exits: list[int] = []
    watchdog = StallWatchdog(WatchdogConfig(warn_after=0.2, exit_after=0.3, interval=0.05), exit_process=exits.append)
    watchdog.start()
    try:
        for _ in range(20):
            await asyncio.sleep(0.03)  # busy, but yielding
    finally:
        await watchdog.stop()
    assert watchdog.stalls == 0 and exits == []


async def test_without_exit_after_the_watchdog_only_reports() -> None:
    exits: list[int] = []
    watchdog = StallWatchdog(WatchdogConfig(warn_after=0.1, interval=0.02), exit_process=exits.append)
    watchdog.start()
    try:
        await asyncio.sleep(0.05)
        a_blocking_call(0.4)
        await asyncio.sleep(0.1)
    finally:
        await watchdog.stop()
    assert watchdog.stalls == 1 and exits == []


def test_exit_before_warning_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        WatchdogConfig(warn_after=5, exit_after=1)


async def test_the_worker_counts_a_stall_and_names_the_job_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    broker = MemoryBroker()
    jobs = JobRegistry()
    exits: list[int] = []

    @jobs.job("t.blocks")
    async def blocks(payload: Job, ctx: JobContext) -> None:
        a_blocking_call(0.6)

    caplog.set_level(logging.ERROR, logger="conveyor.consumer.watchdog")
    async with _running(broker, jobs, WatchdogConfig(warn_after=0.2, exit_after=0.4, interval=0.05), exits) as (
            producer, worker):
        receipt = await producer.publish("t.blocks", Job(n=1))
        await broker.join(jobs.get("t.blocks").queue)
    assert exits == [EXIT_CODE]
    assert worker.metrics.registry.get_sample_value("conveyor_event_loop_stalls_total") == 1
    blocked = [r for r in caplog.records if r.getMessage().startswith("event loop blocked:")]
    assert blocked and blocked[0].in_flight_job_ids == [receipt.job_id]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("exit_after", "over", "exits_expected"), [(0.5, 1.0, [EXIT_CODE]), (5.0, 1.0, []), (None, 99.0, [])])
async def test_a_sync_thread_past_its_limit_by_exit_after_ends_the_process(
    exit_after: float | None, over: float, exits_expected: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    from conveyor.consumer.threads import Overrun

    stuck = Overrun(key=1, job_id="job-9", job_type="reports.build", thread_id=0, limit=2.0,
                    since=time.monotonic() - over)
    exits: list[int] = []
    watchdog = StallWatchdog(WatchdogConfig(warn_after=0.1, exit_after=exit_after, interval=0.02),
                             exit_process=exits.append, overruns=lambda: [stuck])
    caplog.set_level(logging.WARNING, logger="conveyor.consumer.watchdog")
    watchdog.start()
    try:
        await asyncio.sleep(0.2)  # several looks: it exits once, and only past exit_after
    finally:
        await watchdog.stop()
    assert exits == exits_expected
    ended = [r for r in caplog.records if r.getMessage().startswith("sync handler still running past its time limit")]
    assert len(ended) == len(exits_expected)
    if ended:
        assert ended[0].job_id == "job-9" and ended[0].exit_code == EXIT_CODE  # type: ignore[attr-defined]


async def test_an_async_handler_that_swallows_its_cancel_is_named_and_ends_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MemoryBroker()
    jobs = JobRegistry()
    exits: list[int] = []
    stop = asyncio.Event()

    @jobs.job("t.stubborn", timeout=0.2)
    async def stubborn(payload: Job, ctx: JobContext) -> None:
        while not stop.is_set():  # the bug: a retry loop that catches the cancel too
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass

    caplog.set_level(logging.WARNING, logger="conveyor.consumer.watchdog")
    async with _running(broker, jobs, WatchdogConfig(warn_after=0.1, exit_after=0.5, interval=0.05), exits) as (
            producer, worker):
        receipt = await producer.publish("t.stubborn", Job(n=1))
        deadline = asyncio.get_running_loop().time() + 10
        while not exits:
            assert asyncio.get_running_loop().time() < deadline, "the watchdog never acted"
            await asyncio.sleep(0.05)
        assert [o.job_id for o in worker.processor.overdue()] == [receipt.job_id]
        stop.set()  # let it end, so the worker can stop
    assert exits == [EXIT_CODE]
    named = [r for r in caplog.records if r.getMessage().startswith("async handler ignored its cancel")]
    assert named and named[0].job_id == receipt.job_id  # type: ignore[attr-defined]
    ended = [r for r in caplog.records if r.getMessage().startswith("async handler still running past its time limit")]
    assert len(ended) == 1 and ended[0].job_id == receipt.job_id  # type: ignore[attr-defined]
    assert worker.processor.overdue() == [], "a call that ended is no longer overdue"
