"""``python -m bench.soak``: a bounded soak on the three-node RabbitMQ cluster.

Brings the cluster up (scripts/services/rabbitmq-cluster.sh), starts ``--workers`` real
``conveyor worker`` processes with the multi-host URL, publishes at a fixed ``--rate`` for
``--minutes``, restarts one node (``--restart-node``) in the middle, and every ``--sample``
seconds records the p50/p99 publish→start latency of the jobs that started in that window,
the publish rate achieved and each worker's RSS. Writes a CSV and a PNG (matplotlib) and
prints a summary; at the end it checks that every published job ran. Run once by hand, never
in CI (it takes the whole duration).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from conveyor.common.transport.factory import transport_from_url
from conveyor.producer.producer import Producer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "services" / "rabbitmq-cluster.sh"


@dataclass
class Sample:
    t: float  # seconds since the start
    published: int
    started: int
    p50_ms: float | None
    p99_ms: float | None
    rss_mb: list[float]
    event: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=100.0, help="jobs per second (default 100)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--restart-node", type=int, default=2, choices=(1, 2, 3))
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "soak", help="writes OUT.csv and OUT.png")
    p.add_argument("--replot", action="store_true", help="only redraw OUT.png from OUT.csv")
    return p.parse_args(argv)


def cluster(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_AMQP_URL"}
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"rabbitmq-cluster.sh {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout.strip()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def workdir(queue: str) -> Path:
    work = Path(f"/tmp/conveyor-soak-{queue}")
    work.mkdir(parents=True)
    return work


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "conveyor", "worker", "bench.soak_app:jobs", "--concurrency",
                                 "16", "--http-port", "0"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


class Latencies:
    """Reads the workers' latency file incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.total = 0

    def new(self) -> list[float]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        values = [float(line.split()[1]) for line in complete.decode().splitlines() if line.strip()]
        self.total += len(values)
        return values


async def publish_loop(url: str, queue: str, rate: float, until: float, counter: list[int]) -> None:
    from bench import soak_app

    os.environ["SOAK_QUEUE"] = queue
    async with Producer.for_registry(transport_from_url(url), soak_app.jobs()) as producer:
        start = time.monotonic()
        n = 0
        while time.monotonic() < until:
            await producer.publish(soak_app.JOB_TYPE, {"sent": time.time()})
            n += 1
            counter[0] = n
            ahead = start + n / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)


async def run(args: argparse.Namespace) -> list[Sample]:
    url = cluster("up").splitlines()[-1]
    queue = f"soak.{uuid.uuid4().hex[:8]}"
    work = workdir(queue)
    latencies_file = work / "latencies.txt"
    os.environ["SOAK_LATENCIES"] = str(latencies_file)
    os.environ["SOAK_QUEUE"] = queue
    async with transport_from_url(url) as transport:
        await transport.declare(queue)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CONVEYOR_BROKER_URL": url, "CONVEYOR_LOG_LEVEL": "WARNING",
           "CONVEYOR_METRICS_INTERVAL": "0", "CONVEYOR_STATE_DIR": str(work / "state")}
    workers = [start_worker(env, work / f"worker-{i}.log") for i in range(args.workers)]
    # Publishing starts once every worker consumes: the first window measures the system, not
    # the workers' start-up.
    async with transport_from_url(url) as transport:
        while (await transport.stats(queue)).consumers < args.workers:
            await asyncio.sleep(0.2)
    duration = args.minutes * 60
    began = time.monotonic()
    counter = [0]
    publishing = asyncio.create_task(publish_loop(url, queue, args.rate, began + duration, counter))
    latencies = Latencies(latencies_file)
    samples: list[Sample] = []
    restarted = False
    try:
        while time.monotonic() - began < duration:
            await asyncio.sleep(args.sample)
            event = ""
            if not restarted and time.monotonic() - began >= duration / 2:
                restarted = True
                event = f"restart rabbitc{args.restart_node}"
                restart = asyncio.create_task(asyncio.to_thread(cluster, "restart", str(args.restart_node)))
            window = latencies.new()
            sample = Sample(t=round(time.monotonic() - began, 1), published=counter[0], started=latencies.total,
                            p50_ms=percentile(window, 50), p99_ms=percentile(window, 99),
                            rss_mb=[round(rss_mb(w.pid), 1) for w in workers], event=event)
            samples.append(sample)
            print(f"t={sample.t:6.1f}s published={sample.published} started={sample.started} "
                  f"p50={sample.p50_ms or 0:.1f}ms p99={sample.p99_ms or 0:.1f}ms rss={sample.rss_mb} {event}",
                  flush=True)
        await publishing
        if restarted:
            await restart
        deadline = time.monotonic() + 120
        while latencies.total < counter[0] and time.monotonic() < deadline:
            await asyncio.sleep(1)
            latencies.new()
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(60)
        async with transport_from_url(url) as transport:
            await transport.delete(queue)
    missing = counter[0] - len({line.split()[0] for line in latencies_file.read_text().splitlines()})
    print(f"published {counter[0]}, started {latencies.total} (runs; at-least-once), never started: {max(0, missing)}")
    return samples


def write(samples: list[Sample], out: Path, args: argparse.Namespace) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    workers = len(samples[0].rss_mb) if samples else 0
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "published", "started", "p50_ms", "p99_ms",
                         *(f"worker{i}_rss_mb" for i in range(workers)), "event"])
        for s in samples:
            writer.writerow([s.t, s.published, s.started, _fmt(s.p50_ms), _fmt(s.p99_ms), *s.rss_mb, s.event])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t = [s.t for s in samples]
    top.plot(t, [s.p50_ms for s in samples], label="p50")
    top.plot(t, [s.p99_ms for s in samples], label="p99")
    top.set_ylabel("publish→start (ms)")
    top.set_yscale("log")
    top.legend()
    for i in range(workers):
        bottom.plot(t, [s.rss_mb[i] for s in samples], label=f"worker {i}")
    bottom.set_ylabel("worker RSS (MB)")
    bottom.set_ylim(0, max((max(s.rss_mb) for s in samples), default=1) * 1.25)  # growth shows against zero
    bottom.set_xlabel("seconds")
    bottom.legend()
    for s in samples:
        if s.event:
            for axis in (top, bottom):
                axis.axvline(s.t, color="grey", linestyle="--")
            top.annotate(s.event, (s.t, top.get_ylim()[1]), fontsize=8, va="top")
    fig.suptitle(f"Soak: {args.rate:g} jobs/s for {args.minutes:g} min on a 3-node RabbitMQ 4.0.5 cluster, "
                 f"{workers} workers")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def read_csv(path: Path) -> list[Sample]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return [Sample(t=float(r["t_s"]), published=int(r["published"]), started=int(r["started"]),
                   p50_ms=float(r["p50_ms"]) if r["p50_ms"] else None, p99_ms=float(r["p99_ms"]) if r["p99_ms"] else None,
                   rss_mb=[float(v) for k, v in r.items() if k.endswith("_rss_mb")], event=r["event"]) for r in rows]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.replot:
        write(read_csv(args.out.with_suffix(".csv")), args.out, args)
        print(f"wrote {args.out.with_suffix('.png')}")
        return
    samples = asyncio.run(run(args))
    write(samples, args.out, args)
    print(f"wrote {args.out.with_suffix('.csv')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
