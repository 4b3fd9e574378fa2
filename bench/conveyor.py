"""Conveyor's side of each scenario: ``Producer.publish`` and ``Worker`` on ``RabbitMQTransport``.

Everything a production worker has stays on: the configuration ``conveyor worker`` builds
(``bench.support.cli_worker``: crash guard and journal, watchdog, redactor), metrics (the
Worker's own registry), JSON logging at INFO (to /dev/null, so formatting cost still counts),
payload validation, the breaker middleware, settlement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

# The module ``conveyor worker`` runs from (click, the CLI's settings and commands): imported so
# the RSS row is the deployed command's, not only the engine's.
import conveyor.consumer.cli.worker  # noqa: F401
from bench.support import cli_worker, emit, ready, rss_mib, run_windowed
from conveyor.common.backoff import RetryPolicy
from conveyor.common.errors import RetryableError
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.logging import configure_logging
from conveyor.common.transport.rabbitmq import RabbitMQTransport
from conveyor.consumer.breaker import BreakerConfig
from conveyor.consumer.http import HealthServer
from conveyor.consumer.worker import Worker, freeze_startup_heap

if TYPE_CHECKING:
    from conveyor.producer.producer import Producer

__all__ = ["JOB_TYPE", "BenchJob", "make_transport", "prepublish", "publish_paced", "publish_rate", "worker_main"]

JOB_TYPE = "bench.noop"
# Small tiers so a retry waits ~50 ms, as the raw loop's retry-queue TTL does.
DELAY_TIERS = (0.05, 0.5, 5.0)
RETRY_DELAY = 0.05


class BenchJob(BaseModel):
    i: int
    sent_at: float


def make_transport(url: str) -> RabbitMQTransport:
    return RabbitMQTransport(url, delay_tiers=DELAY_TIERS)


def retry_policy() -> RetryPolicy:
    # delay = min(cap, base × factor^(n-1)) × (1 − jitter·u) = 0.05 s exactly
    return RetryPolicy(max_attempts=5, base=RETRY_DELAY, factor=1.0, cap=RETRY_DELAY, jitter=0.0)


def make_registry(queue: str, handler: Any = None) -> JobRegistry:
    jobs = JobRegistry()

    async def default(payload: BenchJob, ctx: JobContext) -> None:
        return None

    jobs.job(JOB_TYPE, model=BenchJob, queue=queue, retry=retry_policy())(handler or default)
    return jobs


def make_producer(url: str, queue: str) -> Producer:
    # Imported here so the worker subprocess loads only what a Conveyor worker needs (RSS row).
    from conveyor.producer.producer import Producer

    return Producer.for_registry(make_transport(url), make_registry(queue))


async def publish_rate(url: str, queue: str, n: int, window: int) -> tuple[float, float]:
    """(wall, CPU) seconds for ``n`` ``Producer.publish`` calls with ``window`` in flight (each confirmed)."""
    async with make_producer(url, queue) as producer:
        await producer.transport.declare(queue)

        async def publish_one(i: int) -> None:
            await producer.publish(JOB_TYPE, {"i": i, "sent_at": time.time()})

        return await run_windowed(publish_one, n, window)


async def prepublish(url: str, queue: str, n: int, window: int = 500) -> None:
    await publish_rate(url, queue, n, window)


async def publish_paced(url: str, queue: str, rate: float, n: int) -> float:
    from bench.raw import _paced

    async with make_producer(url, queue) as producer:

        async def publish_one(i: int) -> None:
            await producer.publish(JOB_TYPE, {"i": i, "sent_at": time.time()})

        return await _paced(publish_one, rate, n)


async def declare(url: str, queue: str) -> None:
    async with make_transport(url) as transport:
        await transport.declare(queue)


# -- the worker subprocess side -------------------------------------------------------------


async def worker_main(spec: dict[str, Any]) -> None:
    mode = spec["mode"]
    n = int(spec["n"])
    prefetch = int(spec["prefetch"])
    devnull = open(os.devnull, "w")
    # Every retry-scenario job fails once by design: a breaker would (rightly) open and pause
    # consumption, which is not what this scenario measures, so it is set never to trip.
    breaker = BreakerConfig(consecutive_failures=10**9, failure_rate=1.0, min_calls=10**9)
    cli = contextlib.ExitStack()
    # The configuration ``conveyor worker`` runs with (crash guard and journal included).
    config, redact = cli.enter_context(cli_worker(spec["url"], prefetch, breaker=breaker))
    configure_logging("INFO", "json", stream=devnull, redact=redact)
    progress = {"handled": 0, "first": 0.0, "cpu_first": 0.0}
    latencies: list[float] = []
    handled_all = asyncio.Event()
    rss_every = int(spec.get("rss_every", 0))  # the soak: VmRSS every so many jobs
    rss_samples: list[tuple[int, float]] = []

    async def handler(payload: BenchJob, ctx: JobContext) -> None:
        if not progress["first"]:
            progress["first"] = time.perf_counter()
            progress["cpu_first"] = time.process_time()
        if mode == "latency":
            latencies.append(time.time() - payload.sent_at)
        if mode == "retry" and ctx.attempt == 1:
            raise RetryableError("fails once by design")
        progress["handled"] += 1
        if rss_every and progress["handled"] % rss_every == 0:
            rss_samples.append((int(progress["handled"]), rss_mib()))
        if progress["handled"] >= n:
            handled_all.set()

    jobs = make_registry(spec["queue"], handler)
    transport = make_transport(spec["url"])
    await transport.connect()
    worker = Worker(transport, jobs, config=config, redact=redact)
    # /healthz, /readyz, /metrics as ``conveyor worker`` serves them (its default is on): the RSS
    # row is then a deployed worker's, endpoint included.
    http = HealthServer(worker, "127.0.0.1", 0)
    await http.start()
    freeze_startup_heap()  # as ``conveyor worker`` does before it consumes
    rss_at_start = rss_mib()  # beside the peak: what the drain itself added
    await worker.start()
    ready()
    result: dict[str, Any] = {"rss_at_start_mib": round(rss_at_start, 1)}
    try:
        await asyncio.wait_for(handled_all.wait(), float(spec["timeout"]))
        # The last handler returned; the job counts once its ack is on the wire.
        while worker.counts["succeeded"] < n:
            await asyncio.sleep(0.0005)
        result["seconds"] = time.perf_counter() - progress["first"]
        result["cpu_seconds"] = time.process_time() - progress["cpu_first"]
    except TimeoutError:
        pass
    result["completed"] = worker.counts["succeeded"]
    result["counts"] = dict(worker.counts)
    if mode == "latency":
        result["latencies"] = latencies
    if rss_every:
        result["rss_samples"] = rss_samples
    await worker.stop(grace_period=5.0)
    await http.stop()
    await transport.close()
    cli.close()
    emit(result)
