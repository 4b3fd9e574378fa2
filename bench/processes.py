"""``python -m bench.processes``: drain throughput of ``conveyor worker --processes N`` (N = 1, 2)
beside the raw aio-pika drain loop of ``bench.raw``, in one run, on RabbitMQ.

Each sample prefills a fresh quorum queue with ``--jobs`` jobs (untimed), then starts the
drainer. Conveyor runs as users run it: the ``conveyor worker`` command as a subprocess
(``--processes 1`` is today's single worker, no supervisor), ``--concurrency`` = prefetch per
process, metrics on, JSON logs at WARNING. Its handler (``bench.processes_app:jobs``) does nothing;
each worker process keeps the wall time of its first job start and last job end and its CPU
time in between, and writes them when it exits. The harness polls the supervisor's summed
``conveyor_jobs_succeeded_total`` to see the end, then sends SIGTERM; throughput is jobs /
(last end − first start) over all processes, CPU µs/job sums the processes' CPU (the
supervisor's own is not counted: it is idle while the workers drain).

Samples run in ABBA order (raw, N=1, N=2, N=2, N=1, raw for ``--repeat 2``); the best of each is
shown, every sample is printed. The broker runs on the same machine: with 2 cores, the second
worker process competes with RabbitMQ for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.conveyor import JOB_TYPE, make_registry
from bench.machine import describe, rabbitmq_version
from bench.processes_app import OUT_ENV, QUEUE_ENV
from bench.support import ROOT, run_windowed, run_worker_process, sweep_prefix, wait_for_broker

DEFAULT_URL = "amqp://conveyor:conveyor@127.0.0.1:5672/"


# -- the harness -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _succeeded(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
    except OSError:
        return 0.0
    series = f'conveyor_jobs_succeeded_total{{job_type="{JOB_TYPE}"}} '
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(series))


def _start(command: list[str], env: dict[str, str], errors: Path) -> subprocess.Popen[bytes]:
    with errors.open("w") as stderr:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def _tail(errors: Path) -> str:
    return errors.read_text(errors="replace")[-2000:]


def _runs(out: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in out.glob("*.json")]


async def _prefill_conveyor(url: str, queue: str, n: int) -> None:
    from conveyor.common.transport.factory import transport_from_url
    from conveyor.producer.producer import Producer

    async with Producer.for_registry(transport_from_url(url), make_registry(queue)) as producer:

        async def publish_one(i: int) -> None:
            await producer.publish(JOB_TYPE, {"i": i, "sent_at": time.time()})

        await run_windowed(publish_one, n, 500)


async def conveyor_sample(url: str, queue: str, n: int, processes: int, concurrency: int) -> dict[str, Any]:
    await _prefill_conveyor(url, queue, n)
    out = Path(tempfile.mkdtemp(prefix="bench-processes-"))
    port = _free_port()
    env = {**os.environ, "CONVEYOR_BROKER_URL": url, QUEUE_ENV: queue, OUT_ENV: str(out),
           "PYTHONPATH": str(ROOT), "CONVEYOR_STATE_DIR": str(out / "state")}
    command = [sys.executable, "-m", "conveyor", "worker", "bench.processes_app:jobs", "--processes", str(processes),
               "--concurrency", str(concurrency), "--http-port", str(port)]
    errors = out / "stderr.txt"  # a file, not a pipe: a chatty worker must never block on a full pipe
    worker = await asyncio.to_thread(_start, command, env, errors)
    try:
        deadline = time.monotonic() + 600
        while await asyncio.to_thread(_succeeded, port) < n:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"conveyor worker --processes {processes} failed: {_tail(errors)}")
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 120)
        if worker.returncode != 0:
            raise RuntimeError(f"conveyor worker exited {worker.returncode}: {_tail(errors)}")
    finally:
        if worker.poll() is None:
            worker.kill()
    runs = await asyncio.to_thread(_runs, out)
    ran = [r for r in runs if r["count"]]
    count = sum(r["count"] for r in ran)
    if count != n:
        raise RuntimeError(f"the worker processes handled {count} jobs, not {n}")
    seconds = max(r["last"] for r in ran) - min(r["first"] for r in ran)
    cpu = sum(r["cpu_last"] - r["cpu_first"] for r in ran)
    return {"jobs_per_s": n / seconds, "cpu_us_per_job": cpu / n * 1e6, "processes_that_ran": len(ran),
            "peak_rss_mib": max(r.get("peak_rss_mib", 0.0) for r in ran)}


async def raw_sample(url: str, queue: str, n: int, prefetch: int, side: str = "raw") -> dict[str, Any]:
    """The raw drain loop of ``side``: ``raw`` (aio-pika) or ``aiormq``."""
    if side == "aiormq":
        from bench.aiormq_raw import prepublish
    else:
        from bench.raw import prepublish

    await prepublish(url, queue, n)
    spec = {"side": side, "mode": "drain", "url": url, "queue": queue, "n": n, "prefetch": prefetch, "timeout": 600}
    run = await run_worker_process("bench.worker", spec, timeout=660)
    if run.result.get("completed") != n:
        raise RuntimeError(f"{side} drain completed {run.result.get('completed')} of {n}")
    return {"jobs_per_s": n / run.result["seconds"], "cpu_us_per_job": run.result["cpu_seconds"] / n * 1e6,
            "processes_that_ran": 1, "peak_rss_mib": run.result["peak_rss_mib"]}


async def _sample(args: argparse.Namespace, side: str, queue: str) -> dict[str, Any]:
    """One sample; the shared broker may be restarted by someone else's test meanwhile: then
    wait for it and take the sample again (on a fresh queue), once."""
    for attempt in (1, 2):
        await wait_for_broker(args.url)
        try:
            if side == "raw":
                return await raw_sample(args.url, f"{queue}.{attempt}", args.jobs, args.prefetch)
            return await conveyor_sample(args.url, f"{queue}.{attempt}", args.jobs, int(side[-1]), args.prefetch)
        except Exception as exc:
            if attempt == 2:
                raise
            print(f"{side}: sample failed ({type(exc).__name__}: {exc}); taking it again", file=sys.stderr)
    raise AssertionError("unreachable")


async def main(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    console = Console()
    prefix = f"bench.procs.{uuid.uuid4().hex[:8]}."
    sides = ["raw", "conveyor-1", "conveyor-2"]
    order = [side for i in range(args.repeat) for side in (sides if i % 2 == 0 else sides[::-1])]
    samples: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    try:
        for i, side in enumerate(order):
            sample = await _sample(args, side, f"{prefix}{side}.{i}")
            console.print(f"{side}: {sample['jobs_per_s']:,.0f} jobs/s, {sample['cpu_us_per_job']:.0f} CPU µs/job "
                          f"({sample['processes_that_ran']} process(es) ran jobs)", highlight=False)
            samples[side].append(sample)
    finally:
        await sweep_prefix(args.url, prefix)
    raw_best = max(s["jobs_per_s"] for s in samples["raw"])
    table = Table(title=f"drain, {args.jobs:,} jobs, prefetch = concurrency = {args.prefetch} per process "
                        f"(best of {args.repeat})")
    for column in ("drainer", "jobs/s", "× raw", "CPU µs/job (all processes)"):
        table.add_column(column, justify="left" if column == "drainer" else "right")
    names = {"raw": "raw aio-pika loop, 1 process", "conveyor-1": "conveyor worker --processes 1",
             "conveyor-2": "conveyor worker --processes 2"}
    for side in sides:
        best = max(samples[side], key=lambda s: s["jobs_per_s"])
        table.add_row(names[side], f"{best['jobs_per_s']:,.0f}", f"{best['jobs_per_s'] / raw_best:.2f}",
                      f"{min(s['cpu_us_per_job'] for s in samples[side]):.0f}")
    console.print(table)
    machine = describe(await rabbitmq_version(args.url))
    console.print(f"{machine['date']}, {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
                  f"RabbitMQ {machine['rabbitmq']}", highlight=False)
    return samples


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.processes", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("CONVEYOR_AMQP_URL", DEFAULT_URL), help="AMQP URL")
    p.add_argument("--jobs", type=int, default=20_000, help="jobs per sample (default 20,000)")
    p.add_argument("--prefetch", type=int, default=64, help="prefetch = concurrency per process (default 64)")
    p.add_argument("--repeat", type=int, default=2, help="samples per drainer, ABBA order (default 2)")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
