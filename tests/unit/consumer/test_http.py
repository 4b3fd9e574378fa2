from __future__ import annotations

import io
import logging

import aiohttp
import orjson
from pydantic import BaseModel

from conveyor.common.jobs.context import JobContext
from conveyor.common.jobs.registry import DEFAULT_QUEUE, JobRegistry
from conveyor.common.logging import configure_logging
from conveyor.common.transport.memory import MemoryBroker, MemoryTransport
from conveyor.consumer.http import HealthServer
from conveyor.consumer.worker import Worker
from conveyor.producer.producer import Producer


class Job(BaseModel):
    n: int


async def test_health_ready_and_metrics_endpoints_follow_the_worker() -> None:
    broker = MemoryBroker()
    jobs = JobRegistry()

    @jobs.job("t.job")
    async def handler(payload: Job, ctx: JobContext) -> None:
        logging.getLogger("app").warning("handling")

    transport = MemoryTransport(broker)
    await transport.connect()
    worker = Worker(transport, jobs)
    server = HealthServer(worker, "127.0.0.1", 0)
    await server.start()
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"{base}/healthz")).status == 200
            assert (await http.get(f"{base}/readyz")).status == 503  # not consuming yet
            await worker.start()
            assert (await http.get(f"{base}/readyz")).status == 200
            async with Producer.for_registry(MemoryTransport(broker), jobs) as producer:
                receipt = await producer.publish("t.job", Job(n=1))
            await broker.join(DEFAULT_QUEUE)
            metrics = await (await http.get(f"{base}/metrics")).text()
            assert 'conveyor_jobs_succeeded_total{job_type="t.job"} 1.0' in metrics
            assert "conveyor_consumers_attached 1.0" in metrics
            await worker.drain(0)
            assert (await http.get(f"{base}/readyz")).status == 503  # draining: take no traffic
    finally:
        await worker.stop()
        await server.stop()
        logging.getLogger().handlers.clear()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    [handled] = [line for line in lines if line["msg"] == "handling"]
    assert handled["job_id"] == receipt.job_id and handled["job_type"] == "t.job" and handled["attempt"] == 1
