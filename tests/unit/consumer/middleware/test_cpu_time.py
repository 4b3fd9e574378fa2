"""Cost and resource indicators: per-job CPU time, and the process collector in the worker's registry."""

from __future__ import annotations

import time

import pytest
from pydantic import BaseModel

from conveyor.common.errors import ConfigurationError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.metrics import WorkerMetrics
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.middleware.cpu_time import CpuTimeMiddleware
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


async def test_each_job_records_its_cpu_time_for_async_and_sync_handlers() -> None:
    jobs = JobRegistry()

    @jobs.job("t.spin")
    async def spin(payload: Job, ctx: JobContext) -> None:
        end = time.process_time() + 0.02
        while time.process_time() < end:  # burns CPU, so the measure cannot be zero
            pass

    @jobs.job("t.spin_sync")
    def spin_sync(payload: Job, ctx: JobContext) -> None:
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass

    broker = MemoryBroker()
    transport = MemoryTransport(broker)
    await transport.connect()
    worker = Worker(transport, jobs, config=WorkerConfig(metrics_interval=0, concurrency=1, cpu_time_every=1))
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, worker:
        for job_type in ("t.spin", "t.spin_sync", "t.spin"):
            await producer.publish(job_type, Job(n=1))
        await broker.join(DEFAULT_QUEUE)
    sample = worker.metrics.registry.get_sample_value
    assert sample("conveyor_job_cpu_seconds_count", {"job_type": "t.spin"}) == 2
    assert sample("conveyor_job_cpu_seconds_count", {"job_type": "t.spin_sync"}) == 1
    assert (sample("conveyor_job_cpu_seconds_sum", {"job_type": "t.spin"}) or 0) >= 0.04
    assert (sample("conveyor_job_cpu_seconds_sum", {"job_type": "t.spin_sync"}) or 0) >= 0.02


async def test_by_default_the_first_run_of_each_job_type_then_one_in_16_is_measured() -> None:
    jobs = JobRegistry()

    @jobs.job("t.quick")
    async def quick(payload: Job, ctx: JobContext) -> None:
        return None

    @jobs.job("t.rare")
    def rare(payload: Job, ctx: JobContext) -> None:
        return None

    broker = MemoryBroker()
    transport = MemoryTransport(broker)
    await transport.connect()
    worker = Worker(transport, jobs, config=WorkerConfig(metrics_interval=0))
    async with Producer.for_registry(MemoryTransport(broker), jobs) as producer, worker:
        for n in range(40):
            await producer.publish("t.quick", Job(n=n))
        await producer.publish("t.rare", Job(n=0))
        await broker.join(DEFAULT_QUEUE)
    sample = worker.metrics.registry.get_sample_value
    assert worker.counts["succeeded"] == 41  # every job ran; only the measuring is sampled
    assert sample("conveyor_job_cpu_seconds_count", {"job_type": "t.quick"}) == 3  # runs 1, 17, 33
    assert sample("conveyor_job_cpu_seconds_count", {"job_type": "t.rare"}) == 1  # a rare type is seen at once


@pytest.mark.parametrize("every", [0, -1])
def test_a_sampling_interval_below_one_is_refused_as_a_configuration_error(every: int) -> None:
    with pytest.raises(ConfigurationError, match="at least 1"):
        CpuTimeMiddleware(WorkerMetrics(), every=every)


def test_the_workers_registry_exports_rss_open_fds_and_cpu_of_the_process() -> None:
    registry = WorkerMetrics().registry
    assert (registry.get_sample_value("process_resident_memory_bytes") or 0) > 0
    assert (registry.get_sample_value("process_open_fds") or 0) > 0
    assert registry.get_sample_value("process_cpu_seconds_total") is not None
