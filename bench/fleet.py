"""``python -m bench --fleet``: throughput of 1, 2 and 4 ``conveyor worker`` processes, on one
RabbitMQ node and on the three-node cluster (scripts/services/rabbitmq-cluster.sh).

Per row: a fresh queue gets ``--fleet-jobs`` jobs (published first, 200 confirms in flight),
then the workers start (``bench.soak_app``, a job that only records when it started); the row's
figure is jobs / (last job started − first job started), so the workers' start-up is not
counted (a worker that attaches late shows as a slower drain).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from conveyor.common.transport.factory import transport_from_url
from conveyor.producer.producer import Producer

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "scripts" / "services" / "rabbitmq-cluster.sh"
WINDOW = 200


def cluster_url() -> str:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_AMQP_URL"}
    done = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"rabbitmq-cluster.sh up failed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "conveyor", "worker", "bench.soak_app:jobs", "--concurrency",
                                 "32", "--http-port", "0"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _workdir(queue: str) -> Path:
    path = Path(f"/tmp/conveyor-fleet-{queue}")
    path.mkdir(parents=True)
    return path


def _started(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [float(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]


async def fleet_row(url: str, target: str, workers: int, jobs: int) -> dict[str, Any]:
    from bench import soak_app

    queue = f"bench.fleet.{uuid.uuid4().hex[:8]}"
    work = _workdir(queue)
    latencies = work / "started.txt"
    os.environ.update(SOAK_QUEUE=queue, SOAK_LATENCIES=str(latencies))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONVEYOR_BROKER_URL": url, "CONVEYOR_LOG_LEVEL": "WARNING",
           "CONVEYOR_METRICS_INTERVAL": "0", "CONVEYOR_STATE_DIR": str(work / "state")}
    async with transport_from_url(url) as transport:
        await transport.declare(queue)
        async with Producer.for_registry(transport_from_url(url), soak_app.jobs()) as producer:
            began = time.time()
            for first in range(0, jobs, WINDOW):
                await asyncio.gather(*(producer.publish(soak_app.JOB_TYPE, {"sent": time.time()})
                                       for _ in range(first, min(jobs, first + WINDOW))))
            published = time.time() - began
        processes = [_start(env, work / f"worker-{i}.log") for i in range(workers)]
        try:
            deadline = time.monotonic() + 600
            while len(starts := await asyncio.to_thread(_started, latencies)) < jobs:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target} x{workers}: {len(starts)} of {jobs} jobs started after 600 s")
                await asyncio.sleep(0.2)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(60)
        await transport.delete(queue)
    seconds = max(starts) - min(starts)
    return {"target": target, "workers": workers, "jobs": jobs, "seconds": round(seconds, 2),
            "jobs_per_second": round(jobs / seconds), "publish_seconds": round(published, 2)}


async def run_fleet(single_url: str, jobs: int, progress: Any) -> list[dict[str, Any]]:
    rows = []
    for target, url in (("one node", single_url), ("3-node cluster", cluster_url())):
        for workers in (1, 2, 4):
            row = await fleet_row(url, target, workers, jobs)
            progress(f"fleet: {row}")
            rows.append(row)
    return rows
