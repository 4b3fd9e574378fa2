"""A real Prometheus scrapes a worker's /metrics after a known workload; the SLIs come out right.

Prometheus is Debian's package, run by scripts/services/prometheus.sh on a free port with its
own run dir (so it never touches a developer's instance). If it cannot be installed or
started, the test fails: it is never skipped.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import BaseModel

from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import PermanentError, RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.transport.base import OutgoingMessage
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.http import HealthServer
from conveyor.consumer.worker import Worker, WorkerConfig
from conveyor.producer.producer import Producer
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "services" / "prometheus.sh"


class Job(BaseModel):
    n: int


def _service(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), command], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
async def worker_setup() -> AsyncIterator[tuple[Worker, HealthServer, MemoryBroker, JobRegistry]]:
    broker = MemoryBroker()
    jobs = JobRegistry()
    flaky_seen: set[int] = set()

    @jobs.job("obs.ok")
    async def ok(payload: Job, ctx: JobContext) -> None:
        await asyncio.sleep(0.01)

    @jobs.job("obs.flaky", retry=RetryPolicy(max_attempts=3, base=0.1, factor=1, jitter=0))
    async def flaky(payload: Job, ctx: JobContext) -> None:
        if payload.n not in flaky_seen:
            flaky_seen.add(payload.n)
            raise RetryableError("first attempt fails")

    @jobs.job("obs.bad")
    async def bad(payload: Job, ctx: JobContext) -> None:
        raise PermanentError("invalid")

    transport = MemoryTransport(broker)
    await transport.connect()
    worker = Worker(transport, jobs, config=WorkerConfig(metrics_interval=0.5))
    server = HealthServer(worker, "127.0.0.1", 0)
    await worker.start()
    await server.start()
    try:
        yield worker, server, broker, jobs
    finally:
        await server.stop()
        await worker.stop()
        await transport.close()


async def _query(http: aiohttp.ClientSession, base: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    async with http.get(f"{base}/api/v1/query", params={"query": promql}) as response:
        body = await response.json()
    assert body["status"] == "success", body
    return {
        tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("instance", "job"))): float(r["value"][1])
        for r in body["data"]["result"]
    }


async def _wait_for(http: aiohttp.ClientSession, base: str, promql: str, expected: float, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = await _query(http, base, promql)
        if list(last.values()) == [expected]:
            return
        await asyncio.sleep(0.5)
    pytest.fail(f"Prometheus never saw {promql} == {expected}; last answer: {last}")


async def test_prometheus_scrapes_the_worker_and_sees_the_workload(worker_setup, tmp_path: Path) -> None:
    worker, server, broker, jobs = worker_setup
    port = free_port()
    env = {
        "CONVEYOR_RUN_DIR": str(tmp_path),
        "CONVEYOR_PROMETHEUS_PORT": str(port),
        "CONVEYOR_PROMETHEUS_TARGETS": f"127.0.0.1:{server.port}",
        "CONVEYOR_PROMETHEUS_SCRAPE_INTERVAL": "1s",
    }
    started = await asyncio.to_thread(_service, "up", env)
    assert started.returncode == 0, f"prometheus.sh up failed:\n{started.stderr}"
    base = started.stdout.strip().splitlines()[-1]
    try:
        async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
            for n in range(20):
                await producer.publish("obs.ok", Job(n=n))
            for n in range(4):
                await producer.publish("obs.flaky", Job(n=n))
            for n in range(3):
                await producer.publish("obs.bad", Job(n=n))
            await producer.transport.publish(DEFAULT_QUEUE, OutgoingMessage(body=b"not json", message_id="poison"))
            await broker.join(DEFAULT_QUEUE)
        await asyncio.sleep(0.6)  # one depth sample after the last settlement

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await _wait_for(http, base, 'conveyor_jobs_succeeded_total{job_type="obs.ok"}', 20)
            await _wait_for(http, base, 'conveyor_queue_depth{state="dead_letter"}', 4)
            q = lambda promql: _query(http, base, promql)  # noqa: E731
            assert await q('up{job="conveyor-worker"}') == {(("__name__", "up"),): 1.0}
            assert await q("sum by (job_type) (conveyor_jobs_succeeded_total)") == {
                (("job_type", "obs.ok"),): 20.0, (("job_type", "obs.flaky"),): 4.0,
            }
            assert await q("sum by (job_type, reason) (conveyor_jobs_dead_lettered_total)") == {
                (("job_type", "obs.bad"), ("reason", "permanent")): 3.0,
                (("job_type", "unknown"), ("reason", "malformed")): 1.0,
            }
            assert await q("sum by (job_type, reason) (conveyor_jobs_retried_total)") == {
                (("job_type", "obs.flaky"), ("reason", "error")): 4.0,
            }
            attempts = await q('sum by (outcome) (conveyor_job_attempts_sum{job_type="obs.flaky"})')
            assert attempts == {(("outcome", "succeeded"),): 8.0}, "each flaky job took two attempts"
            assert await q("sum(conveyor_job_start_delay_seconds_count)") == {(): 31.0}  # 20 + 4×2 + 3
            assert await q("sum(conveyor_job_duration_seconds_count)") == {(): 31.0}
            p50 = await q('histogram_quantile(0.5, sum by (le) (conveyor_job_duration_seconds_bucket{job_type="obs.ok"}))')
            assert 0.005 < p50[()] <= 0.05, p50
            assert await q('conveyor_queue_depth{state="ready"}') == {
                (("__name__", "conveyor_queue_depth"), ("queue", DEFAULT_QUEUE), ("state", "ready")): 0.0,
            }
            assert await q("conveyor_queue_consumers") == {
                (("__name__", "conveyor_queue_consumers"), ("queue", DEFAULT_QUEUE)): 1.0,
            }
            assert await q("conveyor_jobs_in_flight") == {
                (("__name__", "conveyor_jobs_in_flight"), ("queue", DEFAULT_QUEUE)): 0.0,
            }
            breakers = await q("conveyor_breaker_state")
            assert sorted(dict(k)["breaker"] for k in breakers) == ["obs.bad", "obs.flaky", "obs.ok"]
            assert set(breakers.values()) == {0.0}
            assert await q('sum(conveyor_publish_confirm_seconds_count{kind=~"retry|dead_letter"})') == {(): 8.0}
            # The shipped rules load and evaluate in a real server.
            async with http.get(f"{base}/api/v1/rules") as response:
                groups = (await response.json())["data"]["groups"]
            assert {g["name"] for g in groups} == {"conveyor.sli", "conveyor.alerts"}
            assert all(r["health"] in ("ok", "unknown") for g in groups for r in g["rules"]), groups
    finally:
        stopped = await asyncio.to_thread(_service, "down", env)
        assert stopped.returncode == 0, stopped.stderr
