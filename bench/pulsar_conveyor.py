"""Conveyor's side of the Pulsar rows: ``Producer.publish`` and ``Worker`` on ``PulsarTransport``.

As on RabbitMQ, everything a production worker has stays on: metrics, JSON logging at INFO
(to /dev/null), payload validation, the breaker middleware, settlement. Imports nothing of the
RabbitMQ side, so the worker's RSS is its own.
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
from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import JobRegistry
from conveyor.common.logging import configure_logging
from conveyor.common.transport.pulsar import PulsarTransport
from conveyor.consumer.http import HealthServer
from conveyor.consumer.worker import Worker, freeze_startup_heap

if TYPE_CHECKING:
    from conveyor.producer.producer import Producer

__all__ = [
    "JOB_TYPE", "declare", "delete", "make_transport", "prepublish", "publish_paced", "publish_rate", "worker_main",
]

JOB_TYPE = "bench.noop"


class BenchJob(BaseModel):
    i: int
    sent_at: float


def make_transport(url: str) -> PulsarTransport:
    return PulsarTransport(url)


def make_registry(queue: str, handler: Any = None) -> JobRegistry:
    jobs = JobRegistry()

    async def default(payload: BenchJob, ctx: JobContext) -> None:
        return None

    jobs.job(JOB_TYPE, model=BenchJob, queue=queue)(handler or default)
    return jobs


def make_producer(url: str, queue: str) -> Producer:
    from conveyor.producer.producer import Producer

    return Producer.for_registry(make_transport(url), make_registry(queue))


async def declare(url: str, queue: str) -> None:
    async with make_transport(url) as transport:
        await transport.declare(queue)


async def delete(url: str, *queues: str) -> None:
    """Delete each queue's topic and its DLQ topic (a missing one is fine)."""
    async with make_transport(url) as transport:
        for queue in queues:
            await transport.delete(queue)


async def publish_rate(url: str, queue: str, n: int, window: int) -> tuple[float, float]:
    """(wall, CPU) seconds for ``n`` ``Producer.publish`` calls with ``window`` in flight (each with its receipt)."""
    async with make_producer(url, queue) as producer:
        await producer.transport.declare(queue)

        async def publish_one(i: int) -> None:
            await producer.publish(JOB_TYPE, {"i": i, "sent_at": time.time()})

        return await run_windowed(publish_one, n, window)


async def prepublish(url: str, queue: str, n: int, window: int = 500) -> None:
    await publish_rate(url, queue, n, window)


async def publish_paced(url: str, queue: str, rate: float, n: int) -> float:
    """``n`` ``Producer.publish`` calls at ``rate``/s (stamped with their send time); the worst lag."""
    from bench.raw import _paced  # the same pacing as the RabbitMQ rows (harness side only)

    async with make_producer(url, queue) as producer:

        async def publish_one(i: int) -> None:
            await producer.publish(JOB_TYPE, {"i": i, "sent_at": time.time()})

        lag: float = await _paced(publish_one, rate, n)
        return lag


# -- the worker subprocess side -------------------------------------------------------------


async def worker_main(spec: dict[str, Any]) -> None:
    n, prefetch = int(spec["n"]), int(spec["prefetch"])
    latency = spec.get("mode") == "latency"
    latencies: list[float] = []
    rss_every = int(spec.get("rss_every", 0))  # a long drain: VmRSS every so many jobs
    rss_samples: list[tuple[int, float]] = []
    devnull = open(os.devnull, "w")
    cli = contextlib.ExitStack()
    # The configuration ``conveyor worker`` runs with (crash guard and journal included).
    config, redact = cli.enter_context(cli_worker(spec["url"], prefetch))
    configure_logging("INFO", "json", stream=devnull, redact=redact)
    state = {"handled": 0, "first": 0.0, "cpu_first": 0.0}
    handled_all = asyncio.Event()

    async def handler(payload: BenchJob, ctx: JobContext) -> None:
        if not state["first"]:
            state["first"] = time.perf_counter()
            state["cpu_first"] = time.process_time()
        if latency:
            latencies.append(time.time() - payload.sent_at)
        state["handled"] += 1
        if rss_every and state["handled"] % rss_every == 0:
            rss_samples.append((int(state["handled"]), rss_mib()))
        if state["handled"] >= n:
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
        # The last handler returned; the job counts once its ack is sent.
        while worker.counts["succeeded"] < n:
            await asyncio.sleep(0.0005)
        result["seconds"] = time.perf_counter() - state["first"]
        result["cpu_seconds"] = time.process_time() - state["cpu_first"]
    except TimeoutError:
        pass
    result["completed"] = worker.counts["succeeded"]
    result["counts"] = dict(worker.counts)
    if latency:
        result["latencies"] = latencies
    if rss_every:
        result["rss_samples"] = rss_samples
    await worker.stop(grace_period=5.0)
    await http.stop()
    await transport.close()
    cli.close()
    emit(result)
